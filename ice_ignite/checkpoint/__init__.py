"""Everything that writes, reads, validates, reshards, transfers and names checkpoints and run
directories: checkpoint files and directories, ``SaveCheckpointTask`` / ``LoadCheckpointTask``
(files), what a checkpoint holds and how it is restored (checkpointer), what the next schedule
resumes from and how (resume), sharded saves (sharded), resuming on another number of processes
(resize), loading states into another graph (transfer), the run directory and its lock (rundir),
the copy of the sources (backup) and what a resume would change (resume_checks).

May import ``config/``, ``graph/``, ``nodes/``, ``training/``, ``distributed/``, ``engine/`` and
``ice_ignite.errors``; nothing of the front door (``hypergraph``, ``run``).
"""

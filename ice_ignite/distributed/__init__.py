"""Processes and devices: the ``Launcher`` record (launcher_record), the ``devices=`` grammar and
starting or joining a multi-process run (launcher), the parallel wrappers and collectives
(parallel), ``DDP`` / ``FSDP`` (strategies), processes and signals (processes), collective timeouts
and hang reports (hang), preemption (preemption), and which shard of a stream a process or worker
yields (streams).

May import ``engine/`` and ``ice_ignite.errors``; nothing above (no nodes, graph or checkpoint).
"""

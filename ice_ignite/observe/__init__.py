"""What a run shows of itself: the TensorBoard board (board), per-node timing (timing), the progress
bar (progress) and the run's log files (logs).

May import ``engine/`` and ``ice_ignite.errors``; nothing above (no nodes, graph or checkpoint).
"""

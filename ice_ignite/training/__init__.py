"""How a train step is set up: the ``Optimizer`` spec (optimizer), autocast and the GradScaler
(precision), seeds and RNG states (seeding), and what a non-finite loss does (policies).

May import ``distributed/``, ``engine/`` and ``ice_ignite.errors``; nothing above (no nodes,
graph or checkpoint).
"""

"""The executable graph and its schedule: ``ExecutableGraph`` (graph), ``Task`` (task), the
schedule and ``Repeat`` (schedule), the nodes by uid (registry), tags and uids (tags), and the
graph as a picture (draw).

May import ``nodes/`` and what it may import (``training/``, ``distributed/``, ``observe/``,
``engine/``, ``ice_ignite.errors``); nothing of ``checkpoint/``, the launcher, or the front door.
"""

"""The ignite ``Engine`` a Task runs as: ``TaskEngine`` (engine), the events fired inside a train
step (events) and the global step and epoch counters (counters).

The bottom floor: imports only ``ice_ignite.errors``.
"""

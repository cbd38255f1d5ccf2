"""The ignite ``Engine`` a Task runs as: ``TaskEngine`` (engine), the events fired inside a train
step (events), the global step and epoch counters (counters), and the Protocols of the roles the
upper floors play for the lower ones: a running task, its graph, the run's context (roles).

The bottom floor: imports only ``ice_ignite.errors``.
"""

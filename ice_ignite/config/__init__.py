"""A script's settings and the record a run keeps of itself: parsing and checking them (cli: a
dataclass from ``key=value`` arguments and YAML files, on OmegaConf; the public ``ice.config``,
which adds ``-m`` sweeps, is ``ice_ignite.script``), the config as plain values (values: the flat
keys, the hash, the diff), and the run's record (record: the files written into the run directory
at start).

May import ``ice_ignite.errors`` only.
"""

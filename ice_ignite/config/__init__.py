"""A script's settings and the record a run keeps of itself: ``ice.config`` (a dataclass from the
command line and YAML files, on OmegaConf), the config as plain values (values: the flat keys, the
hash, the diff), and the run's record (record: the files written into the run directory at start).

May import ``ice_ignite.errors`` only.
"""

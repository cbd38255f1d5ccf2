"""The old path of ``ice_ignite.checkpoint.sharded`` (``save``, ``load``, ``export``), kept for old scripts."""

from ice_ignite.checkpoint.sharded import META, export, load, save

__all__ = ["save", "load", "export", "META"]

"""The old path of ``ice_ignite.distributed.streams`` (``stream_shard``), kept for old scripts."""

from ice_ignite.distributed.streams import is_resumable_stream, stream_shard

__all__ = ["stream_shard", "is_resumable_stream"]

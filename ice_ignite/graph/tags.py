"""Tags, uids and the rules that select nodes for a task (API.md, B1).

A node's tags are ``"*"`` (a default node) or one or more other tags. A tag starting with ``#``
is a *hash tag*: a node carrying one is selected when the task names it. The uid of a node is
``",".join(sorted(tags)) + "/" + name``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["DEFAULT_TAG", "normalize_tags", "make_uid", "split_uid", "is_selected", "check_name"]

DEFAULT_TAG = "*"
_TAG_RE = re.compile(r"#?[A-Za-z0-9_.\-]+")
_NAME_RE = re.compile(r"[^\s/,#\[\]\"']+")
#: the longest file name most file systems allow, in bytes (a node name is part of file names)
_NAME_MAX_BYTES = 255

TagsLike = "str | Iterable[str]"


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid node name, else raise ``ValueError`` saying why.

    A name is part of uids, board keys and file names (``best-...-<name>=<value>.pt``), so it is
    refused at ``g.add`` rather than after an epoch of training: no spaces, ``/``, ``,``, ``#``,
    quotes, brackets or control characters (NUL included), at most 255 bytes in UTF-8, and
    encodable as a file name."""
    if not isinstance(name, str):
        raise TypeError(f"a node name must be a str, got {type(name).__name__} {name!r}")
    control = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    if control is not None:
        raise ValueError(
            f"invalid node name {name!r}: it holds the control character {control!r}; node names are "
            "part of file names and log keys: use printable characters only"
        )
    if not name or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid node name {name!r}: use a non-empty name without spaces, '/', ',', '#', quotes or brackets"
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(
            f"invalid node name {name!r}: it cannot be encoded as a file name (UTF-8: {e.reason} at "
            f"position {e.start}); use a name of valid Unicode characters"
        ) from None
    if size > _NAME_MAX_BYTES:
        raise ValueError(
            f"invalid node name {name[:40]!r}... ({size} bytes in UTF-8): node names are at most "
            f"{_NAME_MAX_BYTES} bytes, the longest file name; use a shorter name"
        )
    return name


def normalize_tags(tags: str | Iterable[str], what: str = "tags") -> tuple[str, ...]:
    """Turn ``"a"``, ``"a,b"`` or ``["b", "a"]`` into a sorted tuple of unique tags.

    Raises:
        TypeError: ``tags`` is not a string or an iterable of strings.
        ValueError: a tag is empty or malformed, or ``"*"`` is combined with other tags.

    Examples:
        >>> normalize_tags(["val", "#dbg"])
        ('#dbg', 'val')
    """
    if isinstance(tags, str):
        items = [t.strip() for t in tags.split(",")] if tags.strip() else []
    else:
        try:
            items = list(tags)
        except TypeError:
            raise TypeError(f"{what} must be a str or a list of str, got {type(tags).__name__} {tags!r}") from None
        for t in items:
            if not isinstance(t, str):
                raise TypeError(f"{what} must be a str or a list of str, got an item {t!r} in {tags!r}")
        items = [t.strip() for t in items]
    if not items:
        raise ValueError(f"{what} is empty: pass \"*\" for a default node or task, or name at least one tag")
    for t in items:
        if t == DEFAULT_TAG:
            continue
        if not _TAG_RE.fullmatch(t):
            raise ValueError(
                f"invalid tag {t!r} in {what}={tags!r}: a tag is letters, digits, '_', '-', '.', "
                "optionally prefixed by '#'"
            )
    unique = tuple(sorted(set(items)))
    if DEFAULT_TAG in unique and len(unique) > 1:
        raise ValueError(
            f"{what}={tags!r} combines \"*\" with other tags: \"*\" means 'every task' and stands alone; "
            "drop \"*\" or the other tags"
        )
    return unique


def make_uid(name: str, tags: tuple[str, ...]) -> str:
    """``make_uid("data", ("val", "train")) -> "train,val/data"`` (tags sorted)."""
    return ",".join(sorted(tags)) + "/" + name


def split_uid(uid: str) -> tuple[str, tuple[str, ...]]:
    """Parse ``"<tags>/<name>"`` (tags in any order) into ``(name, sorted tags)``."""
    if not isinstance(uid, str) or uid.count("/") != 1:
        raise KeyError(
            f"{uid!r} is not a node uid: write '<tags>/<name>', e.g. '*/net' or 'train/data' "
            "(tags comma-separated, any order)"
        )
    tag_part, name = uid.split("/")
    return check_name(name), normalize_tags(tag_part, what=f"the tags of uid {uid!r}")


def is_selected(node_tags: tuple[str, ...], query: frozenset[str]) -> bool:
    """Whether a node with ``node_tags`` is selected by a task with tags ``query``.

    Default (``"*"``) nodes are not handled here: they are selected unless overridden, which
    depends on the other nodes (see ``HyperGraph.select_nodes``).
    """
    plain = [t for t in node_tags if not t.startswith("#")]
    if plain and all(t in query for t in plain):
        return True
    return any(t in query for t in node_tags if t.startswith("#"))

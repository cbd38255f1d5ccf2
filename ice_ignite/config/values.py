"""A config as plain values: the nested dict of a dataclass instance (what a checkpoint and
``config.yaml`` hold), its flat ``a.b`` keys, its hash and the difference between two configs."""

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigValues", "plain_values", "flatten", "config_hash", "differences", "show"]

#: what ``differences`` shows for a key one side lacks
ABSENT = "(absent)"


def plain_values(config: Any) -> dict:
    """The settings of ``config`` (a dataclass instance, nested allowed, or a mapping) as a nested
    dict of YAML values: Enums by name, tuples as lists, paths as strings.

    Examples:
        >>> @dataclasses.dataclass
        ... class Config:
        ...     lr: float = 0.1
        ...     sizes: tuple = (1, 2)
        >>> plain_values(Config())
        {'lr': 0.1, 'sizes': [1, 2]}
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a dataclass instance (what ice.config returns) or a dict, got {type(config).__name__}"
        )
    return {str(k): _plain(v) for k, v in config.items()}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_values(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # a path, a dtype: as it is written


def flatten(values: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"width": 8}}`` → ``{"model.width": 8}`` (lists stay values).

    Examples:
        >>> flatten({"lr": 0.1, "model": {"width": 8, "act": "relu"}})
        {'lr': 0.1, 'model.width': 8, 'model.act': 'relu'}
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_hash(values: Mapping) -> str:
    """A SHA-256 of the config's values (canonical JSON, keys sorted): equal configs, equal hashes.

    Examples:
        >>> config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
        True
    """
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def show(value: Any) -> str:
    """A value as it is written on the command line (``null``, ``true``, ``[1, 2]``)."""
    if value is ABSENT:
        return ABSENT
    return json.dumps(value) if not isinstance(value, str) else value


def differences(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """``(flat key, old value, new value)`` for every key whose value differs between two configs
    (``ABSENT`` where one lacks the key), in the new config's key order, then the removed keys.

    Examples:
        >>> differences({"lr": 0.1, "model": {"width": 8}}, {"lr": 0.2, "model": {"width": 8}})
        [('lr', 0.1, 0.2)]
    """
    a, b = flatten(old), flatten(new)
    changed = [(k, a.get(k, ABSENT), v) for k, v in b.items() if k not in a or a[k] != v or type(a[k]) is not type(v)]
    return changed + [(k, v, ABSENT) for k, v in a.items() if k not in b]


@dataclasses.dataclass(frozen=True)
class ConfigValues:
    """A run's config as it is recorded: the plain values, their hash and the defaults they were
    made from (None: unknown, e.g. a dict config).

    Examples:
        >>> @dataclasses.dataclass
        ... class Config:
        ...     lr: float = 0.1
        >>> c = ConfigValues.of(Config(lr=0.2))
        >>> c.values, c.hash[:12], c.changed_from_defaults()
        ({'lr': 0.2}, 'd719c908f8bd', [('lr', 0.1, 0.2)])
    """

    values: dict
    hash: str
    defaults: dict | None = None
    #: flat keys (or groups) a resume may change: fields with ``metadata={"compare": False}``
    not_compared: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: Any) -> "ConfigValues":
        """The record of ``config``: a dataclass instance (whose class gives the defaults) or a dict."""
        values = plain_values(config)
        return cls(values, config_hash(values), _defaults(config), tuple(_not_compared(config, "")))

    def compared(self, key: str) -> bool:
        """Whether a change of ``key`` on resume counts (not under a ``compare=False`` field)."""
        return not any(key == k or key.startswith(k + ".") for k in self.not_compared)

    def changed_from_defaults(self) -> list[tuple[str, Any, Any]]:
        """``(key, default, value)`` for every key set away from its default ([] without defaults)."""
        return differences(self.defaults, self.values) if self.defaults is not None else []


def _not_compared(config: Any, prefix: str) -> list[str]:
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        return []
    found = []
    for f in dataclasses.fields(config):
        if f.metadata.get("compare", True) is False:
            found.append(prefix + f.name)
        else:
            found += _not_compared(getattr(config, f.name), f"{prefix}{f.name}.")
    return found


def _defaults(config: Any) -> dict | None:
    """The values of ``type(config)()``, a required key as OmegaConf's ``???`` (None: no dataclass)."""
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        return None
    return {f.name: _default(f, getattr(config, f.name)) for f in dataclasses.fields(config)}


def _default(f: dataclasses.Field, current: Any) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    elif dataclasses.is_dataclass(current):
        return _defaults(current)
    else:
        return "???"
    return _plain(value)

"""``ice.config``: a script's settings as a dataclass, from ``key=value`` arguments and YAML files.

Parsing, merging and type checks are OmegaConf's (structured configs and its dotted-list grammar);
this module splits the command line, turns OmegaConf's errors into one-line messages that name the
key, and writes ``--help`` from the dataclass.
"""

import dataclasses
import difflib
import enum
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from ice_ignite.errors import ConfigError

__all__ = ["CommandLine", "split_command_line", "load_config", "load_member", "help_text", "describe"]

T = TypeVar("T")

HELP_FLAGS = ("-h", "--help")
CONFIG_FLAG = "--config"
# A sweep (several configurations, one run each) is not ``config``'s: it returns one configuration.
SWEEP_FLAGS = ("-m", "--multirun")


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """A script's arguments, split: the ``--config`` files (merged in order), the ``key=value``
    overrides (applied on top, in order), ``--help``, and ``-m`` (a sweep).

    Examples:
        >>> split_command_line(["--config", "exp.yaml", "lr=0.1", "model.width=256"])
        CommandLine(config_files=('exp.yaml',), overrides=('lr=0.1', 'model.width=256'), help=False, multirun=False)
    """

    config_files: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    help: bool = False
    multirun: bool = False


def split_command_line(argv: Sequence[str]) -> CommandLine:
    """Split ``argv`` (without the program name) into a ``CommandLine``.

    Raises:
        ConfigError: an option other than ``--config``, ``--help`` and ``-m``, ``--config`` without
            a file, or an argument that is not ``key=value``.
    """
    files: list[str] = []
    overrides: list[str] = []
    show_help = multirun = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if not isinstance(arg, str):
            raise ConfigError(f"argument {arg!r} is not a string: pass argv as a list of strings")
        if arg in HELP_FLAGS:
            show_help = True
        elif arg in SWEEP_FLAGS:
            multirun = True
        elif arg == CONFIG_FLAG:
            if i + 1 == len(args) or args[i + 1].startswith("-") or "=" in args[i + 1]:
                raise ConfigError("--config needs a YAML file: --config exp.yaml")
            files.append(args[i + 1])
            i += 1
        elif arg.startswith(CONFIG_FLAG + "="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            raise ConfigError(
                f"unknown option {arg!r}: settings are given as key=value (e.g. lr=0.1), a file as "
                "--config FILE.yaml; --help lists the keys"
            )
        elif "=" not in arg or not arg.split("=", 1)[0].strip():
            raise ConfigError(
                f"argument {arg!r} is not key=value: write KEY=VALUE (e.g. lr=0.1); --help lists the keys"
            )
        else:
            overrides.append(arg)
        i += 1
    return CommandLine(tuple(files), tuple(overrides), show_help, multirun)


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a config: its dotted name, type, default (``dataclasses.MISSING``: required) and help."""

    name: str
    type: str
    default: Any
    help: str


def describe(schema: type) -> list[Key]:
    """Every leaf key of the dataclass ``schema`` (nested dataclasses flattened as ``a.b``), with
    its type, default and help (``field(metadata={"help": ...})``).

    Examples:
        >>> @dataclasses.dataclass
        ... class Model:
        ...     width: int = dataclasses.field(default=128, metadata={"help": "hidden units"})
        >>> @dataclasses.dataclass
        ... class Config:
        ...     lr: float = 1e-3
        ...     model: Model = dataclasses.field(default_factory=Model)
        >>> [(k.name, k.type, k.default) for k in describe(Config)]
        [('lr', 'float', 0.001), ('model.width', 'int', 128)]
    """
    check_schema(schema)
    return list(_walk(schema, "", None))


def _walk(cls: type, prefix: str, instance: Any) -> typing.Iterator[Key]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        name = prefix + f.name
        if instance is not None:
            default = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        nested = _dataclass_of(hints.get(f.name, Any))
        if nested is not None and (default is dataclasses.MISSING or dataclasses.is_dataclass(default)):
            if default is dataclasses.MISSING:
                default = None
            yield from _walk(nested, name + ".", default)
            continue
        yield Key(name, type_name(hints.get(f.name, Any)), default, str(f.metadata.get("help", "")))


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass ``tp`` is (or is optionally), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _dataclass_of(args[0])
    return None


def type_name(tp: Any) -> str:
    """A short, readable name of a type annotation: ``int``, ``float | None``, ``list[int]``,
    ``relu|gelu`` (an Enum: its names)."""
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(m.name for m in tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else getattr(origin, "__name__", str(tp))
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def show_value(value: Any) -> str:
    """A default as it is written on the command line (``null``, ``true``, an Enum's name)."""
    if value is dataclasses.MISSING or value == "???":  # OmegaConf's mark of a required value
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.name
    return str(value) if not isinstance(value, str) else (value if value else "''")


def check_schema(schema: Any) -> None:
    """``schema`` must be a dataclass type.

    Raises:
        TypeError: it is not (an instance, a dict, a plain class).
    """
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        what = type(schema).__name__ if not isinstance(schema, type) else schema.__name__
        raise TypeError(
            f"ice.config takes a dataclass type (e.g. ice.config(Config)), got {what}: declare the "
            "settings as @dataclasses.dataclass class Config: lr: float = 1e-3 ..."
        )


def help_text(schema: type, prog: str) -> str:
    """What ``--help`` prints: the usage and every key with its type, default and help."""
    keys = describe(schema)
    doc = schema.__doc__ or ""
    if doc.startswith(schema.__name__ + "("):  # the signature dataclasses writes when there is none
        doc = ""
    rows = [(k.name, k.type, show_value(k.default), k.help) for k in keys]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("key", "type", "default"))]
    lines = [f"usage: {prog} [--config FILE.yaml ...] [key=value ...]", ""]
    if doc.strip():
        lines += [doc.strip(), ""]
    lines += [
        "Settings are key=value (model.width=256 for a nested key), applied in order on top of the",
        "--config files, which are merged in order on top of the defaults.",
        "",
        "  ".join(h.ljust(w) for h, w in zip(("key", "type", "default"), widths)) + "  help",
    ]
    for row in rows:
        lines.append(("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3]).rstrip())
    return "\n".join(lines)


def _close_key(key: str, keys: list[str]) -> str:
    """' ; did you mean ...?' with the known key (or group of keys) closest to ``key``, or ''."""
    groups = sorted({k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)})
    close = difflib.get_close_matches(key, keys + groups, n=1, cutoff=0.6)
    if not close:  # a misspelt group (modle.width): compare the last parts
        last = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == last][:1]
    if not close:  # a longer or shorter name (lr_rate for lr)
        close = difflib.get_close_matches(key, keys + groups, n=1, cutoff=0.4)
    return f"; did you mean {close[0]!r}?" if close else ""


def _merge(merged: Any, update: Any, keys: dict[str, Key], where: str, given: Any) -> Any:
    """OmegaConf's merge of ``update`` into ``merged``, its errors as one-line ``ConfigError``s.
    ``given(key)`` is the key as the user wrote it (when known) and the value given for it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    try:
        return OmegaConf.merge(merged, update)
    except ConfigKeyError as e:
        key = given(e.full_key)[0]
        raise ConfigError(f"unknown key {key!r}{where}{_close_key(key, list(keys))} (--help lists the keys)") from None
    except OmegaConfBaseException as e:
        key, value = given(e.full_key)
        if key in keys:
            raise ConfigError(f"key {key!r}{where} got {value!r}, expected {keys[key].type}") from None
        inner = [k for k in keys if k.startswith(key + ".")]
        if inner:
            raise ConfigError(
                f"key {key!r}{where} got {value!r}, but it is a group of keys ({', '.join(inner)}): set them "
                f"one by one, e.g. {inner[0]}=..."
            ) from None
        reason = str(getattr(e, "msg", None) or e).splitlines()[0]
        raise ConfigError(f"key {key!r}{where} got {value!r}: {reason}") from None


def load_config(schema: type[T], command_line: CommandLine) -> T:
    """The dataclass ``schema`` filled from its defaults, then the ``--config`` files, then the
    overrides of ``command_line`` (OmegaConf's merge and type checks).

    Raises:
        ConfigError: a file cannot be read, a key is unknown, a value has the wrong type, a
            required key has no value.
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    keys = {k.name: k for k in describe(schema)}
    try:
        merged = OmegaConf.structured(schema)
    except OmegaConfBaseException as e:
        raise TypeError(f"OmegaConf cannot hold {schema.__name__}: {str(e).splitlines()[0]}") from None
    for path in command_line.config_files:
        try:
            loaded = OmegaConf.load(path)
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: no such file") from None
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"--config {path}: not a readable YAML file ({str(e).splitlines()[0]})") from None
        if not OmegaConf.is_dict(loaded):
            raise ConfigError(f"--config {path}: holds a {type(loaded).__name__}, not a mapping of keys to values")

        def in_file(key: str | None, loaded: Any = loaded) -> tuple[str, Any]:
            return (key or "?"), (OmegaConf.select(loaded, key, default=None) if key else None)

        merged = _merge(merged, loaded, keys, f" in {path}", in_file)
    for item in command_line.overrides:
        key, text = (part.strip() for part in item.split("=", 1))
        try:
            update = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise ConfigError(f"{item!r} is not key=value: {str(e).splitlines()[0]}") from None
        merged = _merge(merged, update, keys, "", lambda _k, key=key, text=text: (key, text))
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(
            f"no value for the required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}: give "
            f"{missing[0]}=VALUE or set it in a --config file"
        )
    try:
        return typing.cast(T, OmegaConf.to_object(merged))
    except (OmegaConfBaseException, ValueError, TypeError) as e:  # the dataclass's __post_init__ refused them
        cause = e.__cause__ if isinstance(e, OmegaConfBaseException) and e.__cause__ is not None else e
        raise ConfigError(f"{schema.__name__} refused the settings: {str(cause).splitlines()[0]}") from e


def load_member(schema: type[T], config_files: Sequence[str], overrides: Sequence[str]) -> T:
    """One configuration of a sweep (``ice_ignite.sweep``): the files, then the overrides."""
    return load_config(schema, CommandLine(tuple(config_files), tuple(overrides)))

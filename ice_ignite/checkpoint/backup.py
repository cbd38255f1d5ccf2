"""Copy an entry script and the local modules it imports into a run's ``src/`` directory.

What produced each checkpoint stays: the first run of a run directory writes ``src/``, which is
never overwritten; a later run (a resume) whose sources differ from the newest copy keeps them
beside it, in ``src-2/``, ``src-3/``, ...; identical sources write nothing."""

from __future__ import annotations

import ast
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

__all__ = ["entry_script", "local_sources", "backup_sources", "keep_sources", "source_copies"]

logger = logging.getLogger("ice_ignite")

_COPY_RE = re.compile(r"src(?:-([0-9]+))?")


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(module, level)`` of every import statement in ``path``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return []
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            found.append((base, node.level))
            found.extend((f"{base}.{alias.name}" if base else alias.name, node.level) for alias in node.names)
    return found


def _resolve(module: str, level: int, importer: Path, root: Path) -> Path | None:
    base = root if level == 0 else importer.parent.joinpath(*[".."] * (level - 1)).resolve()
    parts = [p for p in module.split(".") if p]
    if not parts:
        candidate = base / "__init__.py"
        return candidate if candidate.is_file() else None
    stem = base.joinpath(*parts)
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def entry_script(entrypoint: str | os.PathLike) -> Path:
    """``entrypoint`` resolved, or FileNotFoundError when it is not a file."""
    entry = Path(entrypoint).resolve()
    if not entry.is_file():
        raise FileNotFoundError(f"backup_source_files: entry script {str(entry)!r} is not a file; pass __file__")
    return entry


def local_sources(entrypoint: str | Path) -> list[Path]:
    """The entry script and, recursively, every module it imports from its own directory tree
    (packages included), sorted. Installed packages are not followed."""
    entry = entry_script(entrypoint)
    root = entry.parent
    seen: set[Path] = set()
    queue = [entry]
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for module, level in _imports(path):
            target = _resolve(module, level, path, root)
            if target is not None and target.is_relative_to(root):
                queue.append(target)
                # a submodule import also runs its packages' __init__.py files
                for parent in target.parents:
                    if parent == root or not parent.is_relative_to(root):
                        break
                    init = parent / "__init__.py"
                    if init.is_file():
                        queue.append(init.resolve())
    return sorted(seen)


def backup_sources(entrypoint: str | Path, dest: Path) -> list[Path]:
    """Copy ``local_sources(entrypoint)`` into ``dest``, keeping paths relative to the entry
    script's directory. Returns the copies."""
    files = local_sources(entrypoint)
    root = Path(entrypoint).resolve().parent
    copies = []
    for path in files:
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copies.append(target)
    return copies


def source_copies(run_dir: Path) -> list[Path]:
    """The source copies of a run directory, oldest first: ``src``, ``src-2``, ``src-3``, ..."""
    found = []
    for path in run_dir.iterdir() if run_dir.is_dir() else ():
        match = _COPY_RE.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1) or 1), path))
    return [path for _, path in sorted(found)]


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def keep_sources(entrypoint: str | Path, run_dir: Path) -> Path | None:
    """Keep the sources of this run in ``run_dir``: into ``src/`` when it holds none yet (the first
    run); otherwise, when they differ from the newest copy, into the next ``src-<n>/`` (written
    under a temporary name, then renamed), with a warning naming it and the files that differ.
    Returns the folder written, or None when the newest copy holds the same files."""
    files = local_sources(entrypoint)
    root = Path(entrypoint).resolve().parent
    now = {str(path.relative_to(root)): path.read_bytes() for path in files}
    copies = source_copies(run_dir)
    newest = copies[-1] if copies else run_dir / "src"
    then = _files(newest) if newest.is_dir() else {}
    if not then:  # the first run: src/ (created empty with the run directory) gets the sources
        backup_sources(entrypoint, newest)
        return newest
    if then == now:
        logger.info("sources of %s are those kept in %s; nothing new written", Path(entrypoint).name, newest)
        return None
    match = _COPY_RE.fullmatch(newest.name)
    assert match is not None  # src/ or a copy source_copies listed: src-<n>/
    number = int(match.group(1) or 1) + 1
    while (run_dir / f"src-{number}").exists():
        number += 1
    dest = run_dir / f"src-{number}"
    partial = run_dir / f".src-{number}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    backup_sources(entrypoint, partial)
    os.replace(partial, dest)
    changed = sorted(k for k in now.keys() & then.keys() if now[k] != then[k])
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (
            ("changed", changed),
            ("new", sorted(now.keys() - then.keys())),
            ("gone", sorted(then.keys() - now.keys())),
        )
        if names
    ]
    message = (
        f"the sources of this run differ from those kept in {newest.name}/ ({'; '.join(parts)}): kept in "
        f"{dest.name}/ beside it ({newest.name}/ is left as it was)"
    )
    logger.warning("%s", message)
    warnings.warn(message, stacklevel=3)
    return dest

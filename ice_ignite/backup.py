"""Copy an entry script and the local modules it imports into a run's ``src/`` directory."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

__all__ = ["entry_script", "local_sources", "backup_sources"]


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(module, level)`` of every import statement in ``path``."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return []
    found = []
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


def entry_script(entrypoint: "str | Path") -> Path:
    """``entrypoint`` resolved, or FileNotFoundError when it is not a file."""
    entry = Path(entrypoint).resolve()
    if not entry.is_file():
        raise FileNotFoundError(f"backup_source_files: entry script {str(entry)!r} is not a file; pass __file__")
    return entry


def local_sources(entrypoint: "str | Path") -> list[Path]:
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


def backup_sources(entrypoint: "str | Path", dest: Path) -> list[Path]:
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

"""The documentation builds, its code runs, the notebook runs, every public name has a docstring."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ice_ignite

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"(<!-- fragment -->\n)?```python\n(.*?)```", re.S)


def code_blocks(page: Path) -> list[str]:
    """The python blocks of a page, without those marked ``<!-- fragment -->``."""
    return [code for fragment, code in FENCE.findall(page.read_text()) if not fragment]


@pytest.mark.slow
def test_the_site_builds_in_strict_mode_with_the_readmes_command(tmp_path):
    # exactly the recipe of `make docs` (the README's command), into a temporary directory
    recipe = re.search(r"^docs:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert recipe == "NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr + proc.stdout, proc.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("ice_ignite.HyperGraph") > 0


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_code_block_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(code_blocks(page)):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.name}, python block {i} failed: {type(e).__name__}: {e}") from e


def test_pages_have_code_to_run():
    runnable = {page.name: len(code_blocks(page)) for page in PAGES}
    assert runnable["README.md"] >= 2 and runnable["training-recipes.md"] >= 8
    assert all(
        count > 0
        for name, count in runnable.items()
        if name not in ("api.md", "errors.md", "distributed.md", "gallery.md")
    )


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_is_stored_without_outputs():
    import nbclient
    import nbformat

    path = ROOT / "notebooks" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code_cells), "strip the notebook's outputs"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in code_cells for o in c.outputs if o.output_type == "stream")
    accuracy = float(re.search(r"validation accuracy (\d\.\d+)", text).group(1))
    assert accuracy > 0.9
    images = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the curves and the graph


def public_names():
    for name in ice_ignite.__all__:
        obj = getattr(ice_ignite, name)
        yield name, obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr in ("train", "eval"):
                    continue
                if inspect.isfunction(member) or isinstance(member, property):
                    yield f"{name}.{attr}", member


@pytest.mark.parametrize("name, obj", list(public_names()), ids=[n for n, _ in public_names()])
def test_every_public_name_has_a_docstring(name, obj):
    doc = inspect.getdoc(obj.fget if isinstance(obj, property) else obj)
    assert doc and doc.strip(), f"{name} has no docstring"


def test_where_things_live_lists_every_folder_and_module():
    section = (ROOT / "docs" / "concepts.md").read_text().split("## Where things live")[1]
    rows = {
        re.search(r"`([^`]+)`", row.split("|")[1]).group(1): row.split("|")[2]
        for row in section.splitlines()
        if row.startswith("| `")
    }
    package = ROOT / "ice_ignite"
    folders = sorted(p.name + "/" for p in package.iterdir() if (p / "__init__.py").exists())
    assert sorted(name for name in rows if name != "ice_ignite/") == folders
    for folder in folders:
        modules = sorted(p.stem for p in (package / folder).glob("*.py") if p.stem != "__init__")
        assert sorted(set(re.findall(r"`(\w+)` \(", rows[folder]))) == modules, folder
    assert all(f"`{p.stem}`" in rows["ice_ignite/"] for p in package.glob("*.py")), "ice_ignite/"


def test_no_merge_conflict_is_left_in_the_tracked_files():
    """A merge's conflict markers once landed in the README (git commits them without a word)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
    left = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".md", ".py", ".cfg", ".toml", ".yaml", ".yml", ".ipynb", ".txt"} or name == "Makefile":
            text = path.read_text(errors="replace")
            left += [f"{name}: {m.group(0)!r}" for m in marker.finditer(text)]
    assert not left, left

"""The graph as a picture: Graphviz DOT and Mermaid text, and PNG / SVG through Graphviz's
``dot`` or matplotlib when either is installed."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ice_ignite.graph.graph import ExecutableGraph

__all__ = ["to_dot", "to_mermaid", "render", "graph_edges", "draw_graph"]

logger = logging.getLogger("ice_ignite")

# kind -> (Graphviz shape, fill colour)
_STYLE = {
    "DatasetNode": ("cylinder", "#cfe2f3"),
    "ModuleNode": ("box", "#fce5cd"),
    "LossNode": ("octagon", "#f4cccc"),
    "MetricNode": ("ellipse", "#d9ead3"),
}
_DEFAULT = ("box", "#eeeeee")


def _kind(node: object) -> str:
    for cls in type(node).__mro__:
        if cls.__name__ in _STYLE:
            return cls.__name__
    return type(node).__name__


def graph_edges(graph: ExecutableGraph) -> list[tuple[str, str]]:
    """``(source, user)`` for every dependency recorded while the graph ran."""
    return [(dep, user) for user, deps in graph.cache.deps.items() for dep in deps if dep in graph.nodes]


def to_dot(graph: ExecutableGraph) -> str:
    """Graphviz DOT: nodes by kind (shape and colour) with their tags, edges from data to users."""
    lines = ["digraph ice_ignite {", '  rankdir=LR;', '  node [style=filled, fontname="Helvetica"];']
    for name, node in graph.nodes.items():
        shape, color = _STYLE.get(_kind(node), _DEFAULT)
        label = f"{name}\\n{_kind(node)}\\n{','.join(node.tags)}"
        lines.append(f'  "{name}" [label="{label}", shape={shape}, fillcolor="{color}"];')
    lines += [f'  "{a}" -> "{b}";' for a, b in graph_edges(graph)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graph: ExecutableGraph) -> str:
    """Mermaid flowchart text (renders in GitHub markdown)."""
    shapes = {
        "DatasetNode": ("[(", ")]"),
        "ModuleNode": ("[", "]"),
        "LossNode": ("{{", "}}"),
        "MetricNode": ("([", "])"),
    }
    ids = {name: f"n{i}" for i, name in enumerate(graph.nodes)}
    lines = ["flowchart LR"]
    for name, node in graph.nodes.items():
        left, right = shapes.get(_kind(node), ("[", "]"))
        lines.append(f'  {ids[name]}{left}"{name}<br/>{_kind(node)} · {",".join(node.tags)}"{right}')
    lines += [f"  {ids[a]} --> {ids[b]}" for a, b in graph_edges(graph)]
    return "\n".join(lines) + "\n"


def _layers(graph: ExecutableGraph, edges: list[tuple[str, str]]) -> dict[str, int]:
    depth = dict.fromkeys(graph.nodes, 0)
    for _ in range(len(depth)):
        changed = False
        for a, b in edges:
            if depth[b] < depth[a] + 1 <= len(depth):
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    return depth


def _render_matplotlib(graph: ExecutableGraph, path: Path) -> None:
    # a Figure of its own, not pyplot: the user's backend (a notebook's inline one) stays as it is
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    edges = graph_edges(graph)
    depth = _layers(graph, edges)
    columns: dict[int, list[str]] = {}
    for name in graph.nodes:
        columns.setdefault(depth[name], []).append(name)
    pos = {name: (3.0 * d, -1.4 * i) for d, names in columns.items() for i, name in enumerate(names)}
    width = max(columns) + 1 if columns else 1
    height = max(len(v) for v in columns.values()) if columns else 1
    fig = Figure(figsize=(2.6 * width + 1, 1.2 * height + 1))
    ax = fig.add_subplot()
    for a, b in edges:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        skip = depth[b] - depth[a] - 1  # an edge over other columns arcs around them
        ax.annotate(
            "",
            xy=(xb - 1.05, yb),
            xytext=(xa + 1.05, ya),
            zorder=1,
            arrowprops={
                "arrowstyle": "->",
                "color": "#555555",
                "lw": 1.2,
                "connectionstyle": f"arc3,rad={-0.35 if skip > 0 else 0.0}",
            },
        )
    for name, node in graph.nodes.items():
        x, y = pos[name]
        _, color = _STYLE.get(_kind(node), _DEFAULT)
        ax.add_patch(
            FancyBboxPatch((x - 1.0, y - 0.45), 2.0, 0.9, boxstyle="round,pad=0.05", fc=color, ec="#333333", zorder=2)
        )
        ax.text(x, y + 0.12, name, ha="center", va="center", fontsize=10, weight="bold", zorder=3)
        ax.text(x, y - 0.2, f"{_kind(node)} · {','.join(node.tags)}", ha="center", va="center", fontsize=7, zorder=3)
    ax.set_xlim(-1.3, 3.0 * (width - 1) + 1.3)
    ax.set_ylim(-1.4 * (height - 1) - 0.8, 1.6)
    ax.axis("off")
    fig.savefig(path, bbox_inches="tight", dpi=120)


def render(graph: ExecutableGraph, path: Path) -> str | None:
    """Write ``path`` (``.png`` or ``.svg``) with Graphviz's ``dot`` if it is on the PATH, else with
    matplotlib if it is installed; returns the tool used, or None when neither is available."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg"):
        raise ValueError(f"draw: a picture is .png or .svg, got {path.name!r}")
    dot = shutil.which("dot")
    if dot is not None:
        subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=to_dot(graph), text=True, check=True)
        return "graphviz"
    try:
        _render_matplotlib(graph, path)
    except ImportError:
        return None
    return "matplotlib"


def draw_graph(graph: ExecutableGraph, path: str | os.PathLike | None, run_dir: Path | None) -> list[Path]:
    """Write ``graph`` as DOT and Mermaid text beside ``path`` and, for a ``.png`` / ``.svg`` path, as
    a picture when Graphviz or matplotlib is installed (see ``HyperGraph.draw``). Returns the files."""
    if path is None:
        if run_dir is None:
            raise ValueError("draw needs path=... outside a run (there is no run directory to draw into)")
        path = run_dir / f"graph-{','.join(graph.tags).replace('*', 'default')}.png"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path.with_suffix(".dot"), path.with_suffix(".mmd")]
    written[0].write_text(to_dot(graph))
    written[1].write_text(to_mermaid(graph))
    if path.suffix.lower() in (".png", ".svg"):
        if render(graph, path) is not None:
            written.append(path)
        else:
            logger.warning(
                "draw: neither Graphviz's dot nor matplotlib is installed; wrote %s and %s only", written[0], written[1]
            )
    return written

"""The import graph of ``pyvmm/``, computed from the source: no cycle, and no import
that goes up the layer order of ``docs/architecture.md`` ("Layers"; :data:`LAYERS` is
that list, and the test checks the two agree).

Every import counts: module level, inside functions (lazy), under ``TYPE_CHECKING``.
``from pyvmm.x import y`` is an edge to ``pyvmm.x.y`` when that is a module, else to
``pyvmm.x``.  Two kinds of edge are not dependencies and are left out: one to the root
package ``pyvmm`` for its dunders (``__version__``: Python runs the root before any
submodule anyway, and it imports nothing at load), and one *from* a deprecation shim
(:data:`SHIMS`: a module kept only so that an old import path goes on working), which
nothing inside pyvmm may import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "pyvmm"

#: top first; a module may import from its own layer and the layers below it.  A module
#: belongs to the layer of the longest prefix naming it.  docs/architecture.md mirrors this.
LAYERS: list[tuple[str, ...]] = [
    ("pyvmm.__main__", "pyvmm.entry"),
    ("pyvmm.cli", "pyvmm.runargs", "pyvmm.runcmd", "pyvmm.artefacts"),
    ("pyvmm.suite", "pyvmm.fuzz"),
    ("pyvmm.pytest_plugin",),
    ("pyvmm.doctor",),
    ("pyvmm",),
    ("pyvmm.machine",),
    ("pyvmm.launch", "pyvmm.runs", "pyvmm.snapshot", "pyvmm.tracing", "pyvmm.lifecycle",
     "pyvmm.background", "pyvmm.events", "pyvmm.statistics", "pyvmm.hardware", "pyvmm.debug",
     "pyvmm.platform"),
    ("pyvmm.snapshot_file", "pyvmm.snapshot_schema"),
    ("pyvmm.vstate", "pyvmm.crash"),
    ("pyvmm.kvmtrace",),
    ("pyvmm.devices",),
    ("pyvmm.loader",),
    ("pyvmm.config", "pyvmm.memory", "pyvmm.x86"),
    ("pyvmm.kvm",),
    ("pyvmm.errors", "pyvmm.record", "pyvmm.hostinfo", "pyvmm.console", "pyvmm.guest"),
]

#: deprecation shims: old import paths of names that moved
SHIMS = {"pyvmm.vstate.fastpath", "pyvmm.vstate.snapshot", "pyvmm.devices.legacy"}


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The pyvmm modules ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif base in known and not (base == "pyvmm" and alias.name.startswith("__")):
                    out.add(base)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def layer_of(module: str) -> int:
    best, found = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    return found


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``g``, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(g.get(v, ())):
            if state.get(w) == 1:
                return [*stack[stack.index(w):], w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(g):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_every_module_has_a_layer() -> None:
    assert [m for m in graph() if layer_of(m) < 0] == []


def test_no_import_cycle() -> None:
    found = cycle(graph())
    assert found is None, "import cycle: " + " -> ".join(found or [])


def test_no_upward_import() -> None:
    bad = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
           for a, targets in sorted(graph().items()) if a not in SHIMS
           for b in sorted(targets) if layer_of(b) < layer_of(a)]
    assert bad == []


def test_nothing_imports_a_shim() -> None:
    bad = [f"{a} imports the deprecated {b}" for a, targets in sorted(graph().items())
           for b in sorted(targets & SHIMS)]
    assert bad == []


def test_the_checks_find_what_they_look_for() -> None:
    g = {"pyvmm.a": {"pyvmm.b"}, "pyvmm.b": {"pyvmm.c"}, "pyvmm.c": {"pyvmm.a"}, "pyvmm.d": set()}
    assert cycle(g) == ["pyvmm.a", "pyvmm.b", "pyvmm.c", "pyvmm.a"]
    assert cycle({"pyvmm.a": {"pyvmm.b"}, "pyvmm.b": set()}) is None
    assert layer_of("pyvmm.kvm.vcpu") > layer_of("pyvmm.machine") > layer_of("pyvmm.cli")
    assert layer_of("pyvmm.snapshot_file") > layer_of("pyvmm.snapshot")


def doc_layers() -> list[tuple[str, ...]]:
    """The layer list of docs/architecture.md: the numbered lines under "## Layers",
    each a comma-separated list of `module` prefixes."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    out = []
    for line in section.splitlines():
        if re.match(r"\d+\. ", line):
            out.append(tuple(m.strip("`") for m in re.findall(r"`[\w.]+`", line)))
    return out


def test_the_doc_lists_the_same_layers() -> None:
    assert doc_layers() == LAYERS

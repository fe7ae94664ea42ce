"""The import graph of ``keraseq``: no cycle, and no import from a lower layer up (``make lint``).

Every ``import``/``from ... import`` of a keraseq module counts, at module level or inside a
function (a lazy import hides a cycle from Python, not from a reader), except those under
``if TYPE_CHECKING:``. The strongly connected components of that graph are the cycles; a
component not in :data:`KNOWN` fails. :data:`KNOWN` is what is left to untangle (issue 31),
so it may only shrink: a listed cycle that no longer exists fails too, until it is removed.

    python .ci/check_imports.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keraseq"

#: Cycles still in the code, each the sorted modules of one component (issue 31). Empty: the
#: backends import no module that asks for the backend (``distributed.py``, ``fused.py``,
#: ``windows.py``); what they share with those lives in ``backend/common.py`` and
#: ``fused_rule.py``, which import no backend.
KNOWN: set[tuple[str, ...]] = set()


#: The layers, top to bottom: a module imports only from its own layer or the ones below, so
#: data flows one way (face -> checks -> trainer -> minibatches -> compiled step). Every module
#: belongs to exactly one layer (a new module must be placed here); a package name stands for
#: its modules.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "the face (scikit-learn, files, export, tools)",
        {
            "keraseq",
            "keraseq.estimator",
            "keraseq.classifier",
            "keraseq.labels",
            "keraseq.hyperparams",
            "keraseq.sklearn_inputs",
            "keraseq.tabular",
            "keraseq.builders",
            "keraseq.fresh",
            "keraseq.fitted",
            "keraseq.streams",
            "keraseq.persistence",
            "keraseq.export",
            "keraseq.model_selection",
            "keraseq.text",
            "keraseq.datasets",
            "keraseq.data",
            "keraseq.h5copy",
            "keraseq.layers",
        },
    ),
    (
        "the trainer (fit, epochs, inference, the session)",
        {
            "keraseq.trainer",
            "keraseq.epochs",
            "keraseq.callbacks",
            "keraseq.inference",
            "keraseq.session",
            "keraseq.reuse",
            "keraseq.selfcheck",
        },
    ),
    ("the checks (of the data against the model)", {"keraseq.checks", "keraseq.model_facts"}),
    (
        "the minibatches (readers, tensors, calls; checks of one value)",
        {
            "keraseq.readers",
            "keraseq.feeding",
            "keraseq.calls",
            "keraseq.validation",
            "keraseq.ranges",
            "keraseq.resets",
        },
    ),
    (
        "the compiled step (backends, state carry, fused loop, objectives, MPI)",
        {
            "keraseq.backend",
            "keraseq.windows",
            "keraseq.fused",
            "keraseq.fused_rule",
            "keraseq.losses",
            "keraseq.distributed",
            "keraseq._mpi_xla",
        },
    ),
    (
        "the ground (containers, lengths, helpers)",
        {"keraseq.inputs", "keraseq.lengths", "keraseq.utils", "keraseq._startup"},
    ),
]


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in :data:`LAYERS` (0 the top), ``None`` if unplaced."""
    for k, (_, names) in enumerate(LAYERS):
        if module in names or any(module.startswith(f"{n}.") for n in names if n != "keraseq"):
            return k
    return None


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer up, and every module in no layer."""
    problems = [f"{m}: in no layer of LAYERS" for m in sorted(graph) if layer_of(m) is None]
    for m in sorted(graph):
        own = layer_of(m)
        for target in sorted(graph[m]):
            there = layer_of(target)
            if own is not None and there is not None and there < own:
                problems.append(
                    f"{m} ({LAYERS[own][0]}) imports {target}, a layer up ({LAYERS[there][0]})"
                )
    return problems


#: Imports made by name at run time (``importlib.import_module``), which the parser cannot see.
DYNAMIC = {"keraseq.backend": {"keraseq.backend.tensorflow", "keraseq.backend.jax"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, modules: set[str]) -> set[str]:
    """The keraseq modules ``path`` imports (a package's ``__init__`` counts as the package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(base: str) -> None:
        while base and base not in modules:
            base = base.rpartition(".")[0]
        if base:
            found.add(base)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("keraseq"):
                    resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("keraseq"):
                for alias in node.names:  # `from . import distributed` imports a module
                    sub = f"{target}.{alias.name}"
                    resolve(sub if sub in modules else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return found


def components(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                found.append(tuple(sorted(members)))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def main() -> int:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imports(p, modules) for p in paths}
    for name, targets in DYNAMIC.items():
        graph[name] |= targets
    cycles = set(components(graph))
    new, gone = cycles - KNOWN, KNOWN - cycles
    for cycle in sorted(new):
        print(f"import cycle: {' <-> '.join(cycle)}", file=sys.stderr)
    for cycle in sorted(gone):
        print(f"no longer a cycle, remove it from KNOWN: {cycle}", file=sys.stderr)
    problems = upward(graph)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not new and not gone and not problems:
        print(
            f"import graph of {len(modules)} modules in {len(LAYERS)} layers: no import up, "
            f"no cycle beyond {len(KNOWN)} known"
        )
    return 1 if new or gone or problems else 0


if __name__ == "__main__":
    sys.exit(main())

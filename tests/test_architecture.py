"""The house rules that keep the package readable, checked on every file so they stay true.

Floors: each top-level part of `surgray` sits on a floor and imports only from lower floors
(or from itself). A new part must be given a floor here before it can be imported by anyone,
which is the point: where it sits is a decision, not an accident.

Concepts: `surgray.model` is split by concept (the SAM2 network, text encoding, the referring
head, checkpoints); each may import only the concepts below it (`CONCEPTS`), and no import
cycle joins modules of different concepts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "surgray"

# part of surgray (subpackage or top-level module) -> floor; lower floors know nothing above them
FLOORS: dict[str, int] = {
    "errors": 0,
    "job_requirements": 0,  # standard library only: jobs check their Python with it first
    "config": 1,
    "io": 1,  # below model: checkpoints and text encoders load through io.storage
    "model": 2,
    "data": 3,
    "eval": 3,
    "tracking": 3,
    "train": 4,
    "demo_inputs": 4,
    "annotate": 5,
    "serving": 6,
    "demo": 7,
    "cli": 8,
}
# A command's module (one `surgray.cli.COMMANDS` dispatches to, or any `cli.py` / `*_cli.py`) is
# an entry point, whatever package holds it: it sits on the top floor with `surgray.cli`.
ENTRY_POINT_FLOOR = FLOORS["cli"]


def _command_modules() -> set[str]:
    from surgray.cli import COMMANDS

    return {module for module, _ in COMMANDS.values()}


def _floor_of(path: Path) -> int:
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.stem == "cli" or path.stem.endswith("_cli") or module in _command_modules():
        return ENTRY_POINT_FLOOR
    return FLOORS.get(_part_of(path), -1)


def _part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> list[tuple[int, str]]:
    """(line, part of surgray) of every absolute `surgray.*` import in the file, at any depth
    (imports inside functions count: they are dependencies too, only later)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "surgray" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def _python_files() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def test_every_part_has_a_floor():
    parts = {_part_of(path) for path in _python_files()}
    assert parts - set(FLOORS) == set(), "give each new part of surgray a floor in FLOORS"


def test_imports_only_go_down_the_floors():
    upward = []
    for path in _python_files():
        source, floor = _part_of(path), _floor_of(path)
        for line, target in _imported_parts(path):
            if target != source and FLOORS.get(target, 99) >= floor and floor != ENTRY_POINT_FLOOR:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {source} -> {target}")
    assert upward == [], "imports that run up the floors:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule is only as good as its parser: a planted upward import must be caught."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from surgray.tracking.tracker import Tracker\n")
    assert _imported_parts(planted) == [(2, "tracking")]


def test_public_api_is_listed_and_lazy():
    """`import surgray` loads no torch and no Ray; every public name resolves."""
    code = (
        "import sys, surgray\n"
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'eager import'\n"
        "missing = [n for n in surgray.__all__ if getattr(surgray, n, None) is None]\n"
        "assert not missing, missing\n"
        "print(len(surgray.__all__))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 10


def test_unknown_public_name_is_an_attribute_error():
    import surgray

    with pytest.raises(AttributeError, match="no_such_name"):
        surgray.no_such_name  # noqa: B018


# ----------------------------------------------------------------- surgray.model by concept
MODEL = PACKAGE / "model"
# concept (subpackage of surgray.model) -> the other concepts it may import. A module directly
# in surgray/model/ (a tool for any network, like quantize) may import none of them.
CONCEPTS: dict[str, set[str]] = {
    "sam2": set(),  # the network: the ground floor
    "text": set(),  # CLIP text encoding: knows nothing of images
    "referring": {"sam2", "text"},  # ReSurgSAM2's head on the network
    "checkpoints": {"sam2", "text", "referring"},  # variants and loading, on top of all three
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _concept_of(module: str) -> str:
    """`surgray.model.<concept>.<x>` -> concept; a module directly in surgray/model -> ''."""
    parts = module.split(".")
    return parts[2] if len(parts) > 3 or (len(parts) == 3 and parts[2] in CONCEPTS) else ""


def _model_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `surgray.model.*` import in the file, at any depth (inside
    functions and `TYPE_CHECKING` blocks too: both are dependencies a reader must follow)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.startswith("surgray.model.")]
    return found


def _model_graph() -> dict[str, set[str]]:
    """surgray.model module -> the surgray.model modules it imports (names that are not
    modules, such as `from surgray.model.sam2.network import SAM2Model`, are dropped)."""
    modules = {_module_name(p): p for p in MODEL.rglob("*.py")}
    return {
        name: {target for _, target in _model_imports(path) if target in modules} - {name}
        for name, path in modules.items()
    }


def test_every_model_subpackage_is_a_known_concept():
    found = {p.name for p in MODEL.iterdir() if (p / "__init__.py").is_file()}
    assert found == set(CONCEPTS), "give each subpackage of surgray.model its place in CONCEPTS"


def test_model_concepts_import_only_what_they_may():
    wrong = []
    for path in sorted(MODEL.rglob("*.py")):
        source = _concept_of(_module_name(path))
        allowed = CONCEPTS.get(source, set()) | {source}
        for line, target in _model_imports(path):
            concept = _concept_of(target)
            if concept and concept not in allowed:
                wrong.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} {source or 'model'} -> {target}"
                )
    assert wrong == [], "imports between model concepts that the rules forbid:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_model_concepts():
    mixed = [c for c in _cycles(_model_graph()) if len({_concept_of(m) for m in c}) > 1]
    assert mixed == [], f"import cycles across concepts of surgray.model: {mixed}"


def test_the_cycle_finder_sees_a_cycle():
    graph = {"a.x": {"b.y"}, "b.y": {"c.z"}, "c.z": {"a.x"}, "d": {"a.x"}}
    assert _cycles(graph) == [["a.x", "b.y", "c.z"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_concepts_are_read_from_module_names():
    assert _concept_of("surgray.model.sam2.heads") == "sam2"
    assert _concept_of("surgray.model.checkpoints") == "checkpoints"
    assert _concept_of("surgray.model.quantize") == ""


def test_no_import_cycle_inside_the_model():
    """Stronger than across concepts: no module of surgray.model imports (even for types) one
    that imports it back. The network's parts receive what they use, not the whole model."""
    assert _cycles(_model_graph()) == []

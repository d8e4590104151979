"""The import rules of docs/ARCHITECTURE.md, enforced: which layer may import which, no
method module importing another's, and no import cycle in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mpt_core"
CORE = {
    "mpt_core.families",
    "mpt_core.errors",
    "mpt_core.spec",
    "mpt_core.storage",
    "mpt_core.data",
    "mpt_core.hub",
    "mpt_core.models",
    "mpt_core.snapshot",
    "mpt_core.registry",
    "mpt_core.records",
    "mpt_core.baselines",
    "mpt_core.protocols",
    "mpt_core.verdict",
    "mpt_core.progress",
}
METHOD_PACKAGES = ("mpt_core.prune", "mpt_core.quant", "mpt_core.lowrank")
# what each layer may not import (by module-name prefix)
HIGHER = (
    "mpt_core.pipeline",
    "mpt_core.measure",
    "mpt_core.evaluate",
    "mpt_core.harness",
    "mpt_core.analysis",
    "mpt_core.reporting",
    "mpt_core.study",
    "mpt_core.commands",
    "mpt_core.cli",
)
FORBIDDEN = {
    "core": ("mpt_core.engine", *METHOD_PACKAGES, *HIGHER),
    "mpt_core.engine": (*METHOD_PACKAGES, *HIGHER),
    "methods": HIGHER,
    "mpt_core.evaluate": (*METHOD_PACKAGES, *HIGHER[:2], *HIGHER[3:]),
    "mpt_core.pipeline": ("mpt_core.prune", "mpt_core.lowrank", *HIGHER[1:]),
    "mpt_core.measure": HIGHER[3:],
    "mpt_core.analysis": ("mpt_core.engine", *METHOD_PACKAGES, *HIGHER[:4], *HIGHER[5:]),
    "mpt_core.reporting": ("mpt_core.engine", *METHOD_PACKAGES, *HIGHER[:4], *HIGHER[6:]),
    "mpt_core.study": ("mpt_core.engine", *METHOD_PACKAGES, *HIGHER[:4], *HIGHER[7:]),
    "mpt_core.harness": HIGHER[7:],
    "mpt_core.commands": (),
    "mpt_core.cli": (),
}
# A method defined on top of another reaches it by design (said in its docstring).
METHOD_ON_METHOD = {
    ("mpt_core.prune.owl", "mpt_core.prune.wanda"),  # OWL runs its base method per layer
    ("mpt_core.prune.owl", "mpt_core.prune.sparsegpt"),
    ("mpt_core.prune.dsnot", "mpt_core.prune.sparsegpt"),  # DSnoT starts from SparseGPT's mask
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every mpt_core module ``name`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> str | None:
    if name in CORE:
        return "core"
    if name.startswith(METHOD_PACKAGES):
        return "methods"
    return next((layer for layer in FORBIDDEN if name.startswith(layer)), None)


def is_method_module(name: str) -> bool:
    """A module that registers a compression method (not a helper of its package)."""
    text = MODULES[name].read_text(encoding="utf-8")
    return name.startswith(METHOD_PACKAGES) and "@register(" in text


def test_every_module_belongs_to_a_layer():
    unplaced = [name for name in MODULES if layer_of(name) is None]
    assert unplaced == ["mpt_core"], unplaced


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_nothing_its_layer_may_not(name):
    layer = layer_of(name)
    forbidden = FORBIDDEN.get(layer, ()) if layer else ()
    bad = sorted(m for m in GRAPH[name] if m.startswith(forbidden))
    assert not bad, f"{name} ({layer}) imports {bad}: see docs/ARCHITECTURE.md"


def test_no_method_module_imports_another_method_module():
    bad = sorted(
        (name, other)
        for name in MODULES
        if is_method_module(name)
        for other in GRAPH[name]
        if is_method_module(other) and (name, other) not in METHOD_ON_METHOD
    )
    assert not bad


def test_the_package_has_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for other in sorted(GRAPH[name]):
            if state.get(other) == 1:
                cycle = path[path.index(other) :] + [other]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other)
        path.pop()
        state[name] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name)


def test_only_the_engine_knows_the_block_parameter_names():
    writers = sorted(
        name
        for name, path in MODULES.items()
        if "model.layers.{" in path.read_text(encoding="utf-8")
        and not name.startswith("mpt_core.engine")
    )
    assert not writers


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself can fail: a method importing the harness is reported."""
    GRAPH["mpt_core.prune.wanda"].add("mpt_core.harness.policy")
    try:
        with pytest.raises(AssertionError, match="imports"):
            test_a_module_imports_nothing_its_layer_may_not("mpt_core.prune.wanda")
    finally:
        GRAPH["mpt_core.prune.wanda"].discard("mpt_core.harness.policy")

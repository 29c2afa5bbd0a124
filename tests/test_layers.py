"""Imports point one way: hw <- reference models <- boards; the verification machinery may use
all three; only the tests and the command line use it.

Every import statement of every module (those inside functions too) is resolved to the
``cnnforge`` module it names and checked against the layer it may reach.
"""

import ast
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent

#: Folders of the package (pyproject.toml's package-dir) and their dotted names.
PACKAGES = {"scripts": "cnnforge", "hw": "cnnforge.hw", "sim": "cnnforge.sim",
            "boards": "cnnforge.boards"}

#: The foundation every layer may use: errors that reach the user as one line, atomic writes.
FOUNDATION = ("cnnforge", "cnnforge.errors", "cnnforge.fsutil")

#: Layer -> the layers its modules may import (itself and the foundation always).
LAYERS = {
    "hw": (),
    "reference": ("hw",),
    "boards": ("hw", "reference"),
    "verify": ("hw", "reference", "boards"),
    "command line": ("hw", "reference", "boards", "verify"),
}


def layer_of(module):
    if module in FOUNDATION:
        return "foundation"
    for prefix, layer in (("cnnforge.hw", "hw"), ("cnnforge.sim.reference", "reference"),
                          ("cnnforge.sim.verify", "verify"), ("cnnforge.boards", "boards")):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    if module == "cnnforge.sim":
        return "reference"     # the package's own __init__: a docstring
    return "command line"


def modules():
    """``(dotted name, path)`` of every module of the package."""
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def imported_modules(name, path):
    """The ``cnnforge`` modules ``path`` imports (``from x import y`` counts ``x.y`` when ``y``
    is a module, else ``x``)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("cnnforge")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("cnnforge"):
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                out.add(candidate if candidate in MODULES else target)
    return out


MODULES = {name for name, _ in modules()}


def test_every_module_has_a_layer():
    assert {"cnnforge.hw.accel", "cnnforge.sim.reference.golden", "cnnforge.sim.verify.system",
            "cnnforge.boards.top", "cnnforge.cli"} <= MODULES
    assert layer_of("cnnforge.sim.reference.golden") == "reference"
    assert layer_of("cnnforge.sim.verify.tb_board") == "verify"
    assert layer_of("cnnforge.cli") == "command line"


@pytest.mark.parametrize("name, path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_point_one_way(name, path):
    layer = layer_of(name)
    allowed = {layer, "foundation"} | set(LAYERS.get(layer, ()))
    if layer == "foundation":
        allowed = {"foundation"}
    wrong = sorted(f"{m} ({layer_of(m)})" for m in imported_modules(name, path)
                   if layer_of(m) not in allowed)
    assert not wrong, f"{name} ({layer}) imports {', '.join(wrong)}"


def test_no_private_names_across_modules():
    """No ``from x import _name`` anywhere: a name used by two modules is public."""
    offenders = []
    for folder in (*PACKAGES, "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                    offenders += [f"{path.relative_to(ROOT)}: {alias.name}" for alias in node.names
                                  if alias.name.startswith("_")]
    assert not offenders, "private names imported: " + "; ".join(offenders)


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The resolver finds relative imports (a test that cannot fail is a defect)."""
    path = tmp_path / "accel.py"
    path.write_text("from ..sim.verify import harness\nfrom .util import pack_fields\n"
                    "def f():\n    from ...cnnforge import cli\n")
    found = imported_modules("cnnforge.hw.accel", path)
    assert "cnnforge.sim.verify.harness" in found
    assert "cnnforge.hw.util" in found
    assert layer_of("cnnforge.sim.verify.harness") not in {"hw", "foundation"}

"""Imports point down the layering that the README's architecture section draws.

Every module under ``src/language_pipes`` is parsed (``ast``, nothing is
imported), and every import of another ``language_pipes`` module is checked,
including the lazy ones inside functions and under ``TYPE_CHECKING``: a lazy
import up the layering is still a cycle, only a hidden one.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import language_pipes

SOURCE = Path(language_pipes.__file__).parent
PACKAGE = "language_pipes"

# Bottom first. A unit (a sub-package or a top-level module) may import itself and
# any unit of a lower layer; units that share a layer are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vocabulary", "paths", "private_files", "process_settings", "config_messages", "metrics", "testbed"),
    ("config",),
    ("config_report", "logs"),
    ("network",),
    ("models",),
    ("pipes", "weights"),
    ("engine",),
    ("api", "node_metrics"),
    ("node",),
    ("node_status",),
    ("tui",),
    ("cli",),
    ("__main__",),
)

# Inside a package, modules that must stay below others (the cycles broken by issue 13).
INNER_LAYERS: tuple[tuple[str, str], ...] = (
    # (lower, upper): ``lower`` may not import ``upper``.
    ("models.embedded", "models.store"),
    ("tui.tabs", "tui.dashboard"),
)


@dataclass(frozen=True)
class Import:
    importer: str  # dotted path below the package, e.g. "pipes.worker"
    imported: str
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = [PACKAGE, *module.split(".")] if module else [PACKAGE]
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports_in(source: str, module: str, is_package: bool) -> list[Import]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [_absolute(module, node, is_package)]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.append(Import(module, name.removeprefix(PACKAGE).removeprefix("."), node.lineno))
    return found


def _imports_of(path: Path) -> list[Import]:
    return _imports_in(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")


def all_imports() -> list[Import]:
    return [found for path in sorted(SOURCE.rglob("*.py")) for found in _imports_of(path)]


def _unit(module: str) -> str:
    return module.split(".")[0]


def _layer_of(unit: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"{unit!r} is in no layer: add it to LAYERS (and the README)")


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {_unit(_module_name(path)) for path in SOURCE.rglob("*.py")} - {""}
    for unit in units:
        _layer_of(unit)


def test_no_import_points_up_or_across_the_layering() -> None:
    wrong = []
    for found in all_imports():
        if not found.imported:  # the package root: only __version__
            continue
        importer, imported = _unit(found.importer), _unit(found.imported)
        if importer != imported and _layer_of(imported) >= _layer_of(importer):
            wrong.append(f"{found.importer}:{found.line} imports {found.imported}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_package_cycles_inside_models_and_tui_stay_broken() -> None:
    wrong = [
        f"{found.importer}:{found.line} imports {found.imported}"
        for found in all_imports()
        for lower, upper in INNER_LAYERS
        if _within(found.importer, lower) and _within(found.imported, upper)
    ]
    assert not wrong, "imports against the inner layering:\n" + "\n".join(wrong)


def test_the_checker_sees_lazy_relative_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .frames import KIND_STEP\n"
        "if TYPE_CHECKING:\n"
        "    from language_pipes.engine.types import Finished\n"
        "def later():\n"
        "    import language_pipes.api.app\n"
    )
    found = {(item.imported, item.line) for item in _imports_in(source, "pipes.worker", is_package=False)}
    assert found == {("pipes.frames", 2), ("engine.types", 4), ("api.app", 6)}

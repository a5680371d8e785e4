"""Imports run one way: a module imports only from its own layer or the layers below it.

The base layer (the run folder, records, config, errors, prompts, answers) knows nothing of
LLMs or stages; `llm` and `tasks` build on it; the stages on those; the commands, and the
test support in `testing`, on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mapd"
# bottom to top; a name is a top-level module or package of `mapd`
LAYERS = [
    {"__init__", "errors", "config", "settings_doc", "records", "rundir", "prompts", "answers"}
    | {"stats"},
    {"llm", "tasks"},
    {"stages", "release", "scoring"},
    # `testing` (loopback servers and loads for tests and benchmarks) may use any layer;
    # no module of mapd imports it
    {"ablation", "preflight", "push", "cli", "__main__", "testing"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def top_name(module: str) -> str:
    """`mapd.stages.exam` -> `stages`; `mapd` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    return "mapd." + ".".join(path.relative_to(SRC).with_suffix("").parts)


def imported_modules(module: str, source: str) -> list[str]:
    """Every `mapd` module the source imports, at the top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.rsplit(".", node.level)[0]
                names.append(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.append(node.module)
    return [n for n in names if n == "mapd" or n.startswith("mapd.")]


def upward_imports(module: str, source: str) -> list[str]:
    own = LAYER_OF[top_name(module)]
    return [m for m in imported_modules(module, source) if LAYER_OF[top_name(m)] > own]


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer():
    names = {top_name(module_name(p)) for p in MODULES}
    assert names <= set(LAYER_OF), names - set(LAYER_OF)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_from_a_layer_above_it(path):
    assert upward_imports(module_name(path), path.read_text(encoding="utf-8")) == []


def test_an_upward_import_is_caught_even_inside_a_function():
    source = "def f():\n    from mapd.stages.train.tokenize import plain_prompt\n"
    assert upward_imports("mapd.stages.exam", source) == []
    assert upward_imports("mapd.llm.batch", source) == ["mapd.stages.train.tokenize"]
    assert upward_imports("mapd.rundir", "from .stages import exam\n") == ["mapd.stages"]

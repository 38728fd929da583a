"""How the Dagster wiring imports: only Dagster's public namespace (an upgrade may change
anything under ``dagster._*``), and no import cycle between the modules of ``defs/``."""

from __future__ import annotations

import ast
from pathlib import Path

import kronos_pipeline.defs as defs_package

DEFS = Path(defs_package.__file__).parent
PREFIX = "kronos_pipeline.defs."


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            # `from kronos_pipeline.defs import evaluation` imports the module evaluation
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def _modules() -> dict[str, set[str]]:
    return {f"{PREFIX}{p.stem}": _imports(p) for p in sorted(DEFS.glob("*.py"))}


def test_the_alert_sensors_and_every_defs_module_import_nothing_private_from_dagster():
    private = {
        module: sorted(m for m in imported if m.startswith("dagster._"))
        for module, imported in _modules().items()
    }
    assert f"{PREFIX}automation" in private  # the module of alert_on_check_failure
    assert {m: p for m, p in private.items() if p} == {}


def test_defs_modules_import_each_other_without_a_cycle():
    names = set(_modules())
    graph = {module: (imported & names) - {module} for module, imported in _modules().items()}
    assert f"{PREFIX}kronos" not in _reachable(graph, f"{PREFIX}kronos")
    cycles = sorted(m for m in graph if m in _reachable(graph, m))
    assert cycles == []
    # the shared reads of the walk-forward live below both stages
    assert f"{PREFIX}walkforward" in graph[f"{PREFIX}kronos"]
    assert f"{PREFIX}evaluation" not in graph[f"{PREFIX}kronos"]


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Modules reachable from ``start`` through one or more imports."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(graph.get(module, ()))
    return seen


#: Libraries that take seconds to import and that only some steps use: every run worker and
#: step process loads the code location, so loading it must not import them (the nightly's
#: runs each paid ~5 s of them before their first step).
HEAVY_ON_USE = (
    "torch", "great_expectations", "statsmodels", "matplotlib", "scipy.stats", "lightgbm", "redis",
)  # fmt: skip


def test_loading_the_code_location_imports_no_library_that_only_some_steps_use():
    import subprocess
    import sys

    probe = (
        "import sys, kronos_pipeline.definitions as d; "
        "assert d.defs is not None; "
        f"print(','.join(m for m in {HEAVY_ON_USE!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == "", f"imported while loading: {done.stdout.strip()}"

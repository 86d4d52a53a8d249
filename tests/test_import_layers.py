"""The package's import graph: every import points down the layers of docs/architecture.md, and no module
imports itself back through others (no import loop). Imports inside functions and under TYPE_CHECKING count."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lumbar_jax"

# docs/architecture.md "Layers", bottom first: a module may import its own layer and the ones below it.
LAYERS = (
    ("facts", ("lumbar_jax", "lumbar_jax.labels", "lumbar_jax.dataset_configs", "lumbar_jax.metrics",
               "lumbar_jax.rundir", "lumbar_jax.calibration", "lumbar_jax.cli", "lumbar_jax.huge_pages",
               "lumbar_jax.pipelines")),  # the package registry `pipelines/__init__.py` only: names
    ("data", ("lumbar_jax.data", "lumbar_jax.data.")),
    ("models", ("lumbar_jax.models", "lumbar_jax.models.", "lumbar_jax.localiser_metrics",
                "lumbar_jax.point_plausibility")),
    ("train", ("lumbar_jax.train", "lumbar_jax.train.")),
    ("restoring", ("lumbar_jax.inference",)),
    ("pipelines", ("lumbar_jax.pipelines.",)),
    ("main job", ("lumbar_jax.cross_validation",)),
    ("run tools", ("lumbar_jax.evaluate", "lumbar_jax.predict", "lumbar_jax.study_report",
                   "lumbar_jax.structured_report", "lumbar_jax.compare", "lumbar_jax.score", "lumbar_jax.analysis",
                   "lumbar_jax.analysis.", "lumbar_jax.seed_ensemble",
                   "lumbar_jax.ensemble_prediction")),
    ("commands", ("lumbar_jax.main", "lumbar_jax.config_overrides")),
)


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Index in LAYERS of `module`: an entry ending in '.' is a package prefix, others exact names."""
    for index, (_, names) in enumerate(LAYERS):
        if any(module.startswith(n) if n.endswith(".") else module == n for n in names):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_import_layers.py (nor docs/architecture.md)")


def package_imports(path: pathlib.Path, name: str, modules: set[str]) -> set[str]:
    """The package modules that `path`, the module `name`, imports: `from lumbar_jax.x import y` counts
    lumbar_jax.x.y when that is one of `modules`, else lumbar_jax.x; relative imports are resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lumbar_jax"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "lumbar_jax":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): package_imports(p, module_name(p), modules) for p in paths}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'importer (layer) imports imported (layer)' for every import from a lower layer to a higher one."""
    return [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
            for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]


def import_loops(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b -> a' for every path of imports that comes back to where it started."""
    loops = []

    def visit(module: str, path: list[str], done: set[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            if dep in path:
                loops.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path + [dep], done)
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], done)
    return sorted(set(loops))


def test_imports_point_down_the_layers():
    upward = upward_imports(import_graph())
    assert not upward, "\n".join(upward)


def test_no_import_loop():
    loops = import_loops(import_graph())
    assert not loops, "\n".join(loops)


def test_the_checks_catch_an_upward_import_and_a_loop(tmp_path):
    """A data module importing training (here relatively), and two modules importing each other, are reported:
    the checks can fail."""
    source = tmp_path / "fake_module.py"
    source.write_text("from ..train import loop\nfrom . import study\n\ndef f():\n    import lumbar_jax.models\n")
    modules = {"lumbar_jax.train.loop", "lumbar_jax.data.study", "lumbar_jax.models"}
    imports = package_imports(source, "lumbar_jax.data.fake_module", modules)
    assert imports == modules
    graph = {"lumbar_jax.data.fake_module": imports, "lumbar_jax.train.loop": {"lumbar_jax.data.fake_module"}}
    assert upward_imports(graph) == [
        "lumbar_jax.data.fake_module (data) imports lumbar_jax.models (models)",
        "lumbar_jax.data.fake_module (data) imports lumbar_jax.train.loop (train)"]
    assert import_loops(graph) == [
        "lumbar_jax.data.fake_module -> lumbar_jax.train.loop -> lumbar_jax.data.fake_module"]

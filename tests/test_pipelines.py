"""The pipeline registry: every name gives its Pipeline, the run-directory files each pipeline writes are
documented, and no module outside the registry and the config's validation decides by a pipeline's name."""

from __future__ import annotations

import ast
import pathlib

import pytest

from lumbar_jax import pipelines
from lumbar_jax.pipelines.base import Pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
ALLOWED_TO_TEST_THE_NAME = {"lumbar_jax/train/config_validation.py"}


@pytest.mark.parametrize("name", pipelines.NAMES)
def test_each_name_gives_its_pipeline(name):
    pipeline = pipelines.get(name)
    assert isinstance(pipeline, Pipeline) and pipeline.name == name


def test_an_unknown_name_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="pipeline 'three_stage' unknown; use one of"):
        pipelines.get("three_stage")


@pytest.mark.parametrize("name", pipelines.NAMES)
def test_the_fold_files_of_a_pipeline_are_in_the_conventions(name):
    conventions = (REPO / "docs" / "conventions.md").read_text()
    for path in pipelines.get(name).fold_files:
        assert path in conventions, f"{name}: {path} is not described in docs/conventions.md section 5"


def name_tests(source: str) -> list[int]:
    """Lines of `source` that compare something's `.pipeline` (e.g. `config.pipeline == 'two_stage'`)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "pipeline" for s in sides):
                lines.append(node.lineno)
    return lines


def test_no_module_decides_by_the_pipeline_name():
    found = {str(p.relative_to(REPO)): name_tests(p.read_text()) for p in sorted((REPO / "lumbar_jax").rglob("*.py"))}
    found = {path: lines for path, lines in found.items() if lines and path not in ALLOWED_TO_TEST_THE_NAME}
    assert not found, f"ask the pipeline object (lumbar_jax/pipelines) instead: {found}"
    assert name_tests("if config.pipeline == 'two_stage':\n    pass\n") == [1]  # the check can fail

"""Every command in the one convention of lumbar_jax/cli.py: `--help` exits 0 with the usage line of the real
invocation and without importing JAX, matplotlib, TFDS, SciPy, pydicom or (but where listed) NumPy (the build
commands import TFDS and register the dataset only after parsing); bad input is one line `error: ...` on stderr
with exit status 2."""

import os
import subprocess
import sys

import pytest

from lumbar_jax import cli
from lumbar_jax import main as main_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("jax", "matplotlib", "tensorflow_datasets", "torch", "scipy", "pydicom", "numpy")

# (how the command is run, the heavy modules its --help may import)
COMMANDS = [
    ("python -m lumbar_jax.main", ()),
    ("python scripts/evaluate.py", ()),
    ("python scripts/predict.py", ()),
    ("python scripts/analyze.py", ()),
    ("python scripts/compare.py", ()),
    ("python -m lumbar_jax.score", ("numpy",)),
    ("python -m lumbar_jax.data.build", ("numpy",)),
    ("python -m lumbar_jax.data.beam_build", ("numpy",)),
    ("python -m lumbar_jax.data.synthetic", ()),
    ("python -m benchmarks.run", ()),
    ("python -m benchmarks.profile_models", ()),
    ("python -m benchmarks.profile_load", ()),
]


def run(command: str, *argv: str, importtime: bool = False) -> subprocess.CompletedProcess:
    args = command.split()[1:]
    if importtime:
        args = ["-X", "importtime", *args]
    return subprocess.run([sys.executable, *args, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command, heavy_allowed", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_help_shows_the_real_invocation_without_heavy_imports(command, heavy_allowed):
    proc = run(command, "--help", importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: {command} "), proc.stdout[:200]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m in HEAVY} - set(heavy_allowed)
    assert "(default: None)" not in proc.stdout


def test_bad_field_of_the_main_job_is_one_line_with_status_2():
    proc = run("python -m lumbar_jax.main", "--config", "configs/vit_effnet.py:smoke", "--config.train.lrr=1")
    assert proc.returncode == 2
    assert proc.stderr == "error: config.train has no field 'lrr' (did you mean 'lr'?)\n"


def test_evaluate_of_a_missing_run_is_one_line_with_status_2(tmp_path):
    proc = run("python scripts/evaluate.py", "--workdir", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "nowhere" in proc.stderr


def test_a_refused_flag_is_one_line_naming_the_flag(capsys):
    assert cli.run(main_module.main, ["--config.train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert err == "error: the following arguments are required: --config (see: python -m lumbar_jax.main --help)\n"
    with pytest.raises(SystemExit) as exit_:
        cli.argument_parser("python x.py", None).parse_args(["--nope"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --nope (see: python x.py --help)\n"


@pytest.mark.parametrize("argv, message", [
    (["--config", "configs/nope.py"], "error: --config configs/nope.py: no such file configs/nope.py\n"),
    (["--config", "configs/vit_effnet.py:bogus"], "error: --config configs/vit_effnet.py:bogus: "),
    (["--config", "configs/vit_effnet.py", "--config.train.steps=many"],
     "error: config.train.steps: cannot read 'many' as int\n"),
])
def test_main_refuses_bad_input_in_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.run(main_module.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_main_refuses_a_workdir_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("")
    assert cli.run(main_module.main, ["--config", "configs/nope.py", "--workdir", str(path)]) == 2
    assert capsys.readouterr().err == f"error: --workdir {path} is a file, not a directory\n"

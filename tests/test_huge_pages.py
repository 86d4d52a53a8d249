"""The re-exec of the main job, evaluate.py and predict.py with glibc.malloc.hugetlb=1 (lumbar_jax/huge_pages.py):
when it happens, that it keeps the user's tunables, and that the re-executed process is the same command line."""

import os
import platform
import runpy
import subprocess
import sys

import pytest

from lumbar_jax import huge_pages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("environ, glibc, mode, expected", [
    ({}, (2, 36), "madvise", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 35), "madvise", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise", False),  # the user's off switch
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, (2, 36), "madvise", False),  # already re-executed
    ({}, (2, 34), "madvise", False),  # glibc without the tunable
    ({}, None, "madvise", False),  # not glibc (musl, macOS)
    ({}, (2, 36), "always", False),  # the kernel backs large mappings with huge pages already
    ({}, (2, 36), "never", False),
    ({}, (2, 36), None, False),  # no THP support
])
def test_wants_reexec(environ, glibc, mode, expected):
    assert huge_pages.wants_reexec(environ, glibc, mode) is expected


def test_with_tunable_keeps_other_tunables():
    env = huge_pages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "HOME": "/h"}
    assert huge_pages.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert huge_pages.thp_mode(str(path)) == "madvise"
    assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


def test_glibc_version_is_this_c_library():
    """Against an independent reader: platform.libc_ver() inspects the interpreter's binary."""
    library, version = platform.libc_ver()
    expected = tuple(int(part) for part in version.split(".")[:2]) if library == "glibc" else None
    assert huge_pages.glibc_version() == expected


@pytest.mark.parametrize("orig_argv, expected", [
    (["python", "-m", "lumbar_jax.main", "--config", "c.py"], "lumbar_jax.main"),
    (["python", "-X", "dev", "-u", "-mlumbar_jax.main"], "lumbar_jax.main"),
    (["python", "-m", "pytest", "-q"], "pytest"),  # a test running the command in-process
    (["python", "-W", "ignore", "scripts/predict.py", "--help"], os.path.realpath("scripts/predict.py")),
    (["python", "-c", "import x"], None),
    (["python"], None),
])
def test_started_entry(orig_argv, expected):
    assert huge_pages.started_entry(orig_argv) == expected


@pytest.mark.parametrize("orig_argv, replaced", [
    (["python", "-m", "lumbar_jax.main", "--config", "c.py"], True),
    (["python", "-m", "pytest", "-q"], False),  # pytest running the main job in-process
])
def test_reexec_replaces_only_a_process_started_as_the_command(monkeypatch, orig_argv, replaced):
    """The decision on any host: glibc and the THP mode are set here, and the exec is recorded, not done."""
    calls = []
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(huge_pages, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    huge_pages.reexec_with_huge_pages("lumbar_jax.main")
    if replaced:
        [(path, argv, env)] = calls
        assert (path, argv) == (sys.executable, orig_argv)
        assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    else:
        assert calls == []


SCRIPT = """
import os, sys
from lumbar_jax import huge_pages
print("before", flush=True)
huge_pages.reexec_with_huge_pages(sys.argv[1])
print(os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])
"""


def _run_script(tmp_path, entry: str) -> tuple[list[str], str, dict]:
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    entry = str(script) if entry == "itself" else entry
    return subprocess.run([sys.executable, str(script), entry, "--b=1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60, check=True).stdout.splitlines(), entry, env


def test_reexec_runs_the_same_command_once_with_the_tunable(tmp_path):
    out, entry, env = _run_script(tmp_path, "itself")
    if huge_pages.wants_reexec(env, huge_pages.glibc_version(), huge_pages.thp_mode()):
        assert out == ["before", "before", f"glibc.malloc.hugetlb=1 [{entry!r}, '--b=1']"]  # once, same argv
    else:
        assert out == ["before", f" [{entry!r}, '--b=1']"]  # no re-exec where it would not help


def test_no_reexec_when_the_process_was_started_as_another_command(tmp_path):
    """A harness (pytest running scripts/predict.py through runpy) must never be replaced by itself."""
    out, entry, _ = _run_script(tmp_path, "lumbar_jax.main")  # started as entry.py, not as the module
    assert out == ["before", f" [{entry!r}, '--b=1']"]


@pytest.mark.parametrize("script", ["scripts/evaluate.py", "scripts/predict.py"])
def test_the_scripts_reexec_before_any_work(monkeypatch, capsys, script):
    """Each script's `__main__` block re-executes first (recorded here, not done), then parses its flags."""
    calls = []
    path = os.path.join(REPO, script)
    monkeypatch.setattr(sys, "orig_argv", ["python", path, "--help"])
    monkeypatch.setattr(sys, "argv", [path, "--help"])
    monkeypatch.setattr(huge_pages, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(path, run_name="__main__")
    assert exit_.value.code == 0 and len(calls) == 1 and calls[0][1] == sys.orig_argv
    assert capsys.readouterr().out.startswith(f"usage: python {script} ")

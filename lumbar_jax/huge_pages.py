"""Transparent huge pages for XLA:CPU's step buffers: the main job, `scripts/evaluate.py` and
`scripts/predict.py` re-execute themselves once with glibc's `glibc.malloc.hugetlb=1` tunable set.

XLA:CPU allocates the temporary buffers of every step afresh. glibc serves large allocations with mmap (above
a threshold that cannot be raised past 32 MiB) and returns them with munmap, so each step faults its whole
working set back in, 4 KiB at a time, and on a small CPU machine the kernel's page zeroing takes a large share
of the job's time. With the tunable (glibc >= 2.35) malloc asks the kernel for transparent huge pages on those
mappings (madvise), which needs 512 times fewer faults. The buffers and the arithmetic are the same, so
results are unchanged. glibc reads tunables only when a process starts, hence the re-exec.

The re-exec happens only where it helps: Linux with glibc >= 2.35 and transparent huge pages in `madvise`
mode (`always` already backs the mappings with huge pages; `never` cannot). To switch it off, set the
tunable yourself, e.g. `GLIBC_TUNABLES=glibc.malloc.hugetlb=0`: a GLIBC_TUNABLES that already names it is
left alone.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library this process runs on, or None when it is not glibc."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (ValueError, OSError, AttributeError):  # not glibc, or not a POSIX confstr
        return None
    match = re.fullmatch(r"glibc (\d+)\.(\d+).*", name)
    return (int(match[1]), int(match[2])) if match else None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode (the bracketed word of `always [madvise] never`), or None."""
    try:
        with open(path) as f:
            match = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return match[1] if match else None


def wants_reexec(environ: Mapping[str, str], glibc: tuple[int, int] | None, mode: str | None) -> bool:
    """Whether re-executing with the tunable set would back the step buffers with huge pages."""
    return (glibc is not None and glibc >= MIN_GLIBC and mode == "madvise"
            and TUNABLE not in environ.get("GLIBC_TUNABLES", ""))


def with_tunable(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` whose GLIBC_TUNABLES also sets the tunable (other tunables are kept)."""
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1"]))
    return env


def started_entry(orig_argv: list[str]) -> str | None:
    """What the process was started to run: the module of `python -m MODULE`, the real path of `python FILE`,
    or None (`python -c`, an interactive interpreter)."""
    args, i = orig_argv[1:], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-m"):
            return arg[2:] or (args[i + 1] if i + 1 < len(args) else None)
        if arg.startswith("-c") or arg == "-":
            return None
        if arg.startswith("-"):
            i += 2 if arg in ("-X", "-W", "--check-hash-based-pycs") else 1  # options that take a value
            continue
        return os.path.realpath(arg)
    return None


def reexec_with_huge_pages(entry: str) -> None:
    """Replace this process by the same command line with the tunable set, where that helps (see above).

    `entry` is the calling command, a module name (`lumbar_jax.main`) or a script's `__file__`: nothing
    happens unless the process was started as that command, so a harness that runs the command in-process
    (a test through runpy) is never replaced. Call it first thing in the `__main__` block: nothing done before
    it survives the exec."""
    wanted = os.path.realpath(entry) if entry.endswith(".py") else entry
    if started_entry(sys.orig_argv) == wanted and wants_reexec(os.environ, glibc_version(), thp_mode()):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, with_tunable(os.environ))

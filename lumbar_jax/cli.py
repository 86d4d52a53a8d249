"""One convention for every command of the project (`python -m lumbar_jax.main`, `scripts/*.py`, the `-m` tools
and `benchmarks`): argparse flags, usage lines that show how the command is really run, defaults in `--help`,
and bad input reported as one line `error: ...` on stderr with exit status 2 (argparse's own status for a bad
flag; a refused flag is reported the same way, in one line).

A command module keeps its heavy imports (JAX, TFDS, matplotlib) inside the function that needs them, so
that `--help` and a refused flag answer at once.

    def main(argv=None) -> int:
        parser = cli.argument_parser("python scripts/evaluate.py", __doc__)
        parser.add_argument("--workdir", required=True, help="run directory")
        args = parser.parse_args(argv)
        cli.setup_logging()
        ...

    if __name__ == "__main__":
        sys.exit(cli.run(main))

`main` raises ValueError / OSError with a message naming the bad path, field or value; `cli.run` turns it into
the one line and the exit status (so a test calls `cli.run(module.main, argv)` to see what a user sees).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

# The errors that mean "the input is bad" (a path, a field, a value): the library raises them with a message
# naming what is wrong, and a command turns them into one line and exit status 2.
BAD_INPUT_ERRORS = (ValueError, OSError)
BAD_INPUT_EXIT = 2


def _process_start() -> float:
    """The `time.time()` at which this process started: on Linux from /proc (an exec, such as the huge-pages
    re-execution, keeps it, and the interpreter's own start-up counts), elsewhere when this module is imported
    (a command imports it first)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


_STARTED = _process_start()


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default after its help (none for a required
    option, an on/off switch or an option without a default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with a refused command line reported in one line (not the usage line and then the error)."""

    def error(self, message: str):
        self.exit(BAD_INPUT_EXIT, f"error: {message} (see: {self.prog} --help)\n")


def argument_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser whose usage line is `prog` (how the command is run) and whose description is `doc`."""
    return _ArgumentParser(prog=prog, description=doc, formatter_class=_HelpFormatter, allow_abbrev=False)


def setup_logging(level: int = logging.INFO) -> None:
    """INFO lines of the project on stderr, in one format; the libraries' chatter only from WARNING (absl:
    Orbax, TFDS; jax: "Unable to initialize backend 'tpu'" while it looks for accelerators, "Resetting cache"
    when the compilation cache is set up), so their warnings still show. `force`: replaces a handler another
    import installed first, which would swallow them."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    for library in ("absl", "jax"):
        logging.getLogger(library).setLevel(logging.WARNING)


def wall_s() -> float:
    """Seconds since the command's process started, for timing lines that account for the whole wall time."""
    return time.time() - _STARTED


def check_input_path(path: str, flag: str, folder: bool) -> None:
    """Refuse an input `path` that is not there, before any work (and any heavy import): FileNotFoundError
    naming `flag` when it is not an existing folder (`folder`) or file."""
    if not (os.path.isdir(path) if folder else os.path.isfile(path)):
        raise FileNotFoundError(f"{flag} {path} not found (or not a {'directory' if folder else 'file'})")


def check_output_path(path: str, flag: str) -> None:
    """Refuse an output `path` that cannot be written, before any work: FileNotFoundError naming `flag` when its
    folder does not exist, IsADirectoryError when it is a folder, PermissionError when the folder is not
    writable."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag} {path}: folder {folder} not found")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path} is a folder, not a file")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{flag} {path}: folder {folder} is not writable")


def error(message: object) -> int:
    """Print `error: message` on stderr; the exit status for bad input."""
    print(f"error: {message}", file=sys.stderr)
    return BAD_INPUT_EXIT


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """`main(argv)`'s exit status; a BAD_INPUT_ERRORS exception becomes one line on stderr and status 2, and
    argparse's exit (0 after `--help`, 2 for a refused flag) a returned status too."""
    try:
        return main(argv) or 0
    except BAD_INPUT_ERRORS as err:
        return error(err)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        raise

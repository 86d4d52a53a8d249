"""One convention for every command of the project (`python -m lumbar_jax.main`, `scripts/*.py`, the `-m` tools
and `benchmarks`): argparse flags, usage lines that show how the command is really run, defaults in `--help`,
and bad input reported as one line on stderr with exit status 2 (argparse's own status for a bad flag).

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
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

# The errors that mean "the input is bad" (a path, a field, a value): the library raises them with a message
# naming what is wrong, and a command turns them into one line and exit status 2.
BAD_INPUT_ERRORS = (ValueError, OSError)
BAD_INPUT_EXIT = 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default after its help."""


def argument_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser whose usage line is `prog` (how the command is run) and whose description is `doc`."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=_HelpFormatter)


def setup_logging(level: int = logging.INFO) -> None:
    """INFO lines of the project on stderr, in one format; the libraries' per-file chatter (absl: Orbax, TFDS)
    only from WARNING. `force`: replaces a handler another import installed first, which would swallow them."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)


def error(message: object) -> int:
    """Print `error: message` on stderr; the exit status for bad input."""
    print(f"error: {message}", file=sys.stderr)
    return BAD_INPUT_EXIT


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """`main(argv)`'s exit status; a BAD_INPUT_ERRORS exception becomes one line on stderr and status 2."""
    try:
        return main(argv) or 0
    except BAD_INPUT_ERRORS as err:
        return error(err)

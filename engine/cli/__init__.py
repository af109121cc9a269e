"""`int8wb`: the command line of the workbench.

Each public module of this package is one subcommand (or a small family of them): it defines
`add_parser(subparsers)`, which registers the command and sets `func` (parsed args -> exit code).
Modules whose names start with `_` hold what several commands share. They are found at start-up.
User errors (`WorkbenchError`) print one line to stderr and exit with status 2;
a cancelled job (Ctrl-C) exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from int8wb.engine.errors import WorkbenchError
from int8wb.engine.installation import __version__
from int8wb.engine.model import dependencies

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="int8wb",
        description="Int8 Workbench: see the activation outliers of a language model, pick the threshold, "
        "quantize to INT8 the LLM.int8() way and measure what it costs.",
    )
    parser.add_argument("--version", action="version", version=f"int8wb {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module_info.name.startswith("_") and module_info.name != "__main__":
            importlib.import_module(f"{__name__}.{module_info.name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    return run_command(args.func, args, "int8wb")


def run_command(func, args: argparse.Namespace, prog: str) -> int:
    """`func(args)`'s exit status, with a user error or a missing dependency as one line on stderr (status 2)
    and Ctrl-C as 130: the one place that turns what a command raises into what the shell sees."""
    try:
        return int(func(args) or 0)
    except WorkbenchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ImportError as exc:  # a dependency that no loader wrapped: name it rather than print a traceback
        print(f"{prog}: error: {dependencies.diagnosis(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

"""`int8wb gui`: the workbench window. Qt and the app are imported only when the command runs."""

from __future__ import annotations

import argparse
import os
import sys

from int8wb.engine.errors import BadInput


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("gui", help="open the workbench window (starts a local engine behind it)")
    parser.add_argument(
        "--connect",
        metavar="CONNECTION_FILE",
        help="use the remote engine of this connection file instead of starting one",
    )
    parser.add_argument("--model", metavar="PATH", help="a model directory or GGUF file to offer first")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    check_display(os.environ, sys.platform)
    from int8wb.app.main import main

    return main(connection_file=args.connect, model=args.model)


def check_display(environ, platform: str) -> None:
    """On Linux without a display Qt aborts with a cryptic plugin message; say what to do instead."""
    if platform.startswith("linux") and not any(
        environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    ):
        raise BadInput(
            "no display to open the window on: run it in a desktop session, under a virtual "
            "display (`xvfb-run -a int8wb gui`), or use the command line (`int8wb demo`)"
        )

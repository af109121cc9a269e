"""`int8wb gui`: the workbench window. Qt and the app are imported only when the command runs."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("gui", help="open the workbench window (starts a local engine behind it)")
    parser.add_argument("--connect", metavar="CONNECTION_FILE",
                        help="use the remote engine of this connection file instead of starting one")
    parser.add_argument("--model", metavar="PATH", help="a model directory or GGUF file to offer first")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from app.main import main

    return main(connection_file=args.connect, model=args.model)

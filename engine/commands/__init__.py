"""CLI subcommands of `int8wb`.

Each public module here defines `add_parser(subparsers)`, which registers one or
more subcommands and sets `func` (a callable taking the parsed args and
returning an exit code) as their default. `engine.cli` finds them itself.
"""

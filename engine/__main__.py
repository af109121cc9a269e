"""`python -m int8wb.engine`: run the engine process; the same as `int8wb engine` (see engine.cli.engine_command)."""

import argparse
import sys

from int8wb.engine.cli import engine_command, run_command

PROG = "python -m int8wb.engine"


def run() -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=engine_command.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    engine_command.add_arguments(parser)
    return run_command(engine_command.main, parser.parse_args(), PROG)


if __name__ == "__main__":
    sys.exit(run())

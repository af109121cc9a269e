"""`python -m engine`: run the engine process; the same as `int8wb engine` (see engine.commands.engine_cmd)."""

import argparse
import sys

from engine.commands import engine_cmd


def run() -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=engine_cmd.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    engine_cmd.add_arguments(parser)
    return engine_cmd.main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(run())

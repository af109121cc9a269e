"""Entry point of the frozen bundle: one executable for the window, the engine and the command line.

Without arguments it opens the window (what the desktop entry runs). With
arguments it is `int8wb`: `int8-workbench engine --key-stdin ...` is how the
window starts its engine child from the same bundle (a frozen app has no
`python -m engine`; see engine.client), and `int8-workbench --version`,
`int8-workbench install-desktop-entry` and the other subcommands work as they
do in a Python installation.
"""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["gui"]))

"""`python -m engine.cli`: the same as the `int8wb` command."""

import sys

from engine.cli import main

sys.exit(main())

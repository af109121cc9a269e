"""`python -m int8wb.engine.cli`: the same as the `int8wb` command."""

import sys

from int8wb.engine.cli import main

sys.exit(main())

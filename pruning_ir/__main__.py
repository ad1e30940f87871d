"""``python -m pruning_ir``: the command line (see :mod:`pruning_ir.cli`)."""

import sys

from .cli import main

sys.exit(main())

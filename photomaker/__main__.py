"""``python -m photomaker``: see :mod:`photomaker.cli`."""

import sys

from photomaker.cli import main

sys.exit(main())

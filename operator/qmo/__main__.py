"""``python -m qmo`` is ``qmo``."""

import sys

from qmo.cli import main

sys.exit(main())

"""``python -m local_ensign``: see ``local_ensign.cli``."""

import sys

from .cli import main

sys.exit(main())

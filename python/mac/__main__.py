"""``python -m mac`` and ``torchrun ... -m mac train ...``: the mac command."""

import sys

from mac.cli import main

sys.exit(main())

"""``python -m hipchatd``."""

import sys

from hipchatd.cli import main

sys.exit(main())

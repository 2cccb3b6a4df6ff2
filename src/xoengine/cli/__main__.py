"""``python -m xoengine.cli``."""

import sys

from xoengine.cli import main

sys.exit(main())

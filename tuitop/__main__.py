"""``python -m tuitop``: the same as the ``tuitop`` command."""

import sys

from tuitop.cli import main

sys.exit(main())

"""``python -m lbd_worker``: the same as the ``lbd-worker`` console script."""

import sys

from lbd_worker.cli import main

sys.exit(main())

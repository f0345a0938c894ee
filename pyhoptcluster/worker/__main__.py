"""``python -m pyhoptcluster.worker``: the same as the ``pyhoptcluster-worker`` command."""

import sys

from pyhoptcluster.worker.main import main

sys.exit(main())

"""`python -m worker` is `anomaly-worker`."""

import sys

from worker.cli import main

sys.exit(main())

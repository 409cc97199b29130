"""``python -m probes`` is the ``probes`` command."""

import sys

from probes.cli import main

sys.exit(main())

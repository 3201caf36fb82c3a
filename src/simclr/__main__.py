"""``python -m simclr`` runs the command line."""

import sys

from simclr.cli import main

sys.exit(main())

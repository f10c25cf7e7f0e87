"""`python -m balora` runs the command line."""

import sys

from balora.cli import main

sys.exit(main())

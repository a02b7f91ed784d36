"""`python -m killswitch_audit.cli`: the same as `python -m killswitch_audit`."""

import sys

from . import main

sys.exit(main())

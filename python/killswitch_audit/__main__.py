"""`python -m killswitch_audit`: the `killswitch-audit` command line."""

import sys

from .cli import main

sys.exit(main())

"""`python -m killswitch_audit.bench`: the same as `killswitch-audit bench`."""

import sys

from .main import bench_main

if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:]))

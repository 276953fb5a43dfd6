"""``python -m gateway ARGS`` = ``wattshare gateway ARGS``."""

import sys

from tools.cli import main

if __name__ == "__main__":  # spawned verification workers import this module too
    sys.exit(main(["gateway", *sys.argv[1:]]))

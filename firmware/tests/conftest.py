# The firmware application package `app` (firmware/app) is not installed into the
# venv like `wattcore`: the device imports it from its own /lib. Put firmware/ on
# the path so the shared app tests import it the same way under CPython.
import sys
from pathlib import Path

_FIRMWARE = str(Path(__file__).resolve().parents[1])
if _FIRMWARE not in sys.path:
    sys.path.insert(0, _FIRMWARE)

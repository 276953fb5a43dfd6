# Shared by the core tests under CPython (pytest) and inside the MicroPython VM.
import sys

IS_MICROPYTHON = sys.implementation.name == "micropython"


def vector_path(name):
    if IS_MICROPYTHON:
        return "/vectors/" + name
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "..", "..", "..", "docs", "vectors", name)


def load_vector(name):
    import json

    with open(vector_path(name)) as f:
        return json.load(f)


def raises(exc_type, fn, *args):
    # True when fn(*args) raises exc_type (and not another exception).
    try:
        fn(*args)
    except exc_type:
        return True
    return False

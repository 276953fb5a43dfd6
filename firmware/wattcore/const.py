# `const` for every core module: MicroPython's compiler folds `X = const(1)`
# by name; under CPython it is the identity.
try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]
        return x

# Runs before main.py on every reset. Keep it tiny: a crash here leaves only the
# REPL. Vendor debug output off the console UART; the application starts in main.py.
import gc

try:
    import esp

    esp.osdebug(None)
except ImportError:
    pass
gc.collect()

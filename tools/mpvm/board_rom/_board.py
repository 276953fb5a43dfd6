# The virtual board's glue, built into its image like a frozen module: it is not on
# the board's filesystem (tools/mpvm/board.mjs imports it before mounting the flash).
#
# asyncio.run: the WebAssembly VM runs on Node's event loop and cannot block a
# statement until a coroutine ends. On the virtual board asyncio.run(coro) hands the
# coroutine to the board, which awaits it as soon as the running statement (a REPL
# command, boot.py, main.py) has returned, before it prints the next prompt or the
# end of a raw-REPL command. So the code after asyncio.run(...) in that statement
# runs before the coroutine: a console function prints its result from inside the
# coroutine it runs (as firmware/main.py's console functions do).
import asyncio

_pending = []  # type: list


def _run(coro):
    _pending.append(coro)


asyncio.run = _run  # type: ignore[assignment]


def pending():
    return len(_pending) > 0


async def drain():
    while _pending:
        await _pending.pop(0)


def discard():
    while _pending:
        _pending.pop().close()


def run_file(name):
    # MicroPython's pyexec_file: the file runs as __main__
    with open(name) as f:
        source = f.read()
    exec(compile(source, name, "exec"), {"__name__": "__main__", "__file__": name})

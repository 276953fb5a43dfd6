"""Entry point of the gateway's child processes (started by :mod:`gateway.ipc`).

``python -m gateway.worker ingest FD PARENT_PID UDP_FD``
    an ingest process: receives, verifies and stores the requests on the UDP socket
    UDP_FD (:func:`gateway.app.serve_ingest_process`), on uvloop.
"""

import ctypes
import os
import signal
import socket
import sys
import threading
import time


def _die_with_parent(parent_pid):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def main(argv):
    kind, fd, parent_pid, *args = argv
    _die_with_parent(int(parent_pid))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(fd))
    try:
        if kind == "ingest":
            import uvloop

            from gateway.app import serve_ingest_process

            sock.setblocking(False)
            (udp_fd,) = args
            return uvloop.run(serve_ingest_process(sock, int(udp_fd)))
        raise SystemExit(f"unknown worker kind {kind!r}")
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the gateway went away
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

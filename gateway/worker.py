"""Entry point of the gateway's child processes (started by :mod:`gateway.ipc`).

``python -m gateway.worker verify FD PARENT_PID MAX_FUTURE_SKEW_S MAX_AGE_S``
    checks chunks of batches with :func:`gateway.verify.check_batches`.
``python -m gateway.worker writer FD PARENT_PID DB_PATH LINGER_S MAX_ROWS``
    the one database writer (:func:`gateway.writer.serve`).
"""

import ctypes
import gc
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


def verify_loop(sock, max_future_skew_s, max_age_s):
    from gateway import ipc, verify

    policy = verify.Policy(int(max_future_skew_s), int(max_age_s))
    ipc.write_frame(sock, "ready")  # imports done: the gateway may count on us
    frames = ipc.FrameReader(sock)
    while True:
        message = frames.next()
        if message is None:
            return 0
        chunk_id, jobs = message
        ipc.write_frame(sock, (chunk_id, verify.check_batches(jobs, policy)))


def main(argv):
    kind, fd, parent_pid, *args = argv
    _die_with_parent(int(parent_pid))
    # As in the gateway process: what start-up allocated is never scanned again, and the
    # young generation is collected less often (checking a batch allocates a lot).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(fd))
    try:
        if kind == "verify":
            return verify_loop(sock, *args)
        if kind == "writer":
            from gateway import writer

            db_path, linger_s, max_rows = args
            return writer.serve(sock, db_path, float(linger_s), int(max_rows))
        raise SystemExit(f"unknown worker kind {kind!r}")
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the gateway went away
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

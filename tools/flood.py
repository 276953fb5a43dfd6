"""A datagram flood against a gateway, and an honest meter measured through it.

Used by the attack tests (gateway/tests/test_gateway_flood.py: short floods, asserting on
counts) and the flood benchmark (bench/bench_flood.py: latencies). Everything stays on
loopback: a flood comes from its own addresses in 127.0.0.0/8 (``127.0.0.2`` ...), so the
gateway sees it as another source than the honest meter on ``127.0.0.1``.

    python -m tools.flood '{"port": 5683, "sources": ["127.0.0.2"], "sockets": 50,
                            "rate": 60000, "seconds": 30}'

sends ``rate`` datagrams per second for ``seconds`` (0: as fast as it can), round robin
over ``sockets`` sockets per source address, each a device the gateway does not know
(a well-formed CON ``POST /r`` of one signed reading; ``"kind": "junk"`` sends
random bytes instead), and prints ``{"sent": n, "replies": n, "seconds": s}``.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from wattcore import coap, cose, exchange, reading

REPO = Path(__file__).resolve().parent.parent
OWNER = "0x" + "11" * 20


class MeterKey:
    """A meter's device id and P-256 key, signing readings as the firmware does."""

    def __init__(self, device_id=None):
        self.device_id = device_id or b"WS" + os.urandom(6)
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def pubkey(self):
        from gateway import registry

        return registry.uncompressed(self.key.public_key())

    def reading(self, seq, t=None):
        fields = {"dev": self.device_id, "seq": seq, "t": int(time.time()) if t is None else t,
                  "st": 0, "ei": 1000 + seq, "ee": 0, "p": 500, "mdl": 1}
        return cose.sign1(reading.encode_payload(fields), self.device_id, self._sign)

    def _sign(self, tbs):
        r, s = utils.decode_dss_signature(self.key.sign(tbs, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def post(mid, token, payload):
    """A CON POST /r datagram."""
    return coap.encode(coap.CON, coap.POST, mid & 0xFFFF, token,
                       [(coap.OPT_URI_PATH, b"r"), (coap.OPT_CONTENT_FORMAT, b"\x3c")],
                       payload)


# -- the gateway under test -----------------------------------------------------------


def start_gateway(directory, meters, repo=REPO, **sections):
    """``python -m gateway run`` on loopback with ``meters`` registered; returns
    ``(process, coap port, http port, config)``. ``sections``: gateway.toml overrides;
    ``repo``: the checkout whose gateway runs (another one: a baseline to compare)."""
    from gateway import config as gwconfig
    from gateway import registry, store

    directory.mkdir(parents=True, exist_ok=True)
    overrides = {
        "gateway": {"data_dir": "."},
        "coap": {"bind": "127.0.0.1", "port": _free_port(socket.SOCK_DGRAM)},
        "http": {"bind": "127.0.0.1", "port": _free_port(socket.SOCK_STREAM)},
        "ingest": {"processes": 0},
        "log": {"level": "warning"},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    path = directory / gwconfig.CONFIG_NAME
    path.write_text(gwconfig.render(overrides))
    cfg = gwconfig.load(path)
    conn = store.open_store(cfg.db_path)
    try:
        for m in meters:
            registry.add_device(conn, m.device_id, m.pubkey, "SDM120CT", OWNER, "honest")
    finally:
        conn.close()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(path)],
                            cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    port = cfg.coap.port
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.1)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("gateway exited: " + proc.stderr.read().decode()[-2000:])
            probe.sendto(coap.encode(coap.CON, coap.GET, 1, b"", [(coap.OPT_URI_PATH, b"t")]),
                         ("127.0.0.1", port))
            try:
                probe.recv(512)
                return proc, port, cfg.http.port, cfg
            except TimeoutError:
                continue
    finally:
        probe.close()
    stop_gateway(proc)
    raise RuntimeError("gateway did not start within 30 s")


def stop_gateway(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metrics(http_port):
    """The gateway's /metrics as {name{labels}: value}."""
    from tools import gateway_client

    return gateway_client.metrics(f"http://127.0.0.1:{http_port}")


def rss_bytes(pid):
    """Resident memory of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _free_port(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the honest meter -----------------------------------------------------------------


def honest_meter(meter, port, seconds, interval=0.1, first_seq=1, ack_timeout=0.5,
                 max_retransmit=4, source="127.0.0.1"):
    """One meter sending one reading every ``interval`` s for ``seconds`` s, one message
    outstanding at a time, retransmitting like a device (``ack_timeout`` doubling, up to
    ``max_retransmit`` times). Returns ``{"sent", "acked", "lost", "codes", "latencies"}``
    (latency: first transmission to the acknowledgement)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    out = {"sent": 0, "acked": 0, "lost": 0, "retransmissions": 0, "codes": {},
           "latencies": []}
    mid = int.from_bytes(os.urandom(2), "big")
    seq = first_seq
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            started = time.monotonic()
            mid = (mid + 1) & 0xFFFF
            token = mid.to_bytes(2, "big")
            datagram = post(mid, token, exchange.encode_batch([meter.reading(seq)]))
            out["sent"] += 1
            code = _exchange(sock, port, datagram, token, ack_timeout, max_retransmit, out)
            if code is None:
                out["lost"] += 1
            else:
                out["codes"][coap.code_str(code)] = out["codes"].get(coap.code_str(code), 0) + 1
                if code == coap.CHANGED:
                    out["acked"] += 1
                    out["latencies"].append(time.monotonic() - started)
            seq += 1
            pause = started + interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    finally:
        sock.close()
    return out


def _exchange(sock, port, datagram, token, ack_timeout, max_retransmit, out):
    timeout = ack_timeout
    for attempt in range(max_retransmit + 1):
        if attempt:
            out["retransmissions"] += 1
        sock.sendto(datagram, ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                reply = sock.recv(2048)
            except TimeoutError:
                break
            if len(reply) >= 4 + len(token) and reply[4:4 + len(token)] == token:
                return reply[1]
        timeout *= 2
    return None


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the flood ------------------------------------------------------------------------


def start_flood(port, seconds, rate=0, sources=("127.0.0.2",), sockets=50, kind="unknown"):
    """The flood in its own process (it must not share the GIL with what it measures)."""
    params = {"port": port, "seconds": seconds, "rate": rate, "sources": list(sources),
              "sockets": sockets, "kind": kind}
    return subprocess.Popen([sys.executable, "-m", "tools.flood", json.dumps(params)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def flood_result(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("flood failed: " + err[-2000:])
    return json.loads(out)


def _flood(params):
    target = ("127.0.0.1", params["port"])
    socks, datagrams = [], []
    for source in params["sources"]:
        for _ in range(params["sockets"]):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((source, 0))
            s.setblocking(False)
            socks.append(s)
            if params["kind"] == "junk":
                datagrams.append(bytearray(os.urandom(40)))
            else:
                payload = exchange.encode_batch([MeterKey().reading(1)])
                datagrams.append(bytearray(post(0, b"fl", payload)))
    rate, seconds = params["rate"], params["seconds"]
    sent = replies = 0
    count = len(socks)
    started = time.monotonic()
    end = started + seconds
    tick = 0.001
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = count * 64 if not rate else int((now - started) * rate) - sent
        for _ in range(max(0, due)):
            i = sent % count
            d = datagrams[i]
            d[2], d[3] = (sent >> 8) & 0xFF, sent & 0xFF  # a new message id each time
            try:
                socks[i].sendto(d, target)
            except (BlockingIOError, ConnectionRefusedError):
                pass
            sent += 1
        for s in socks[:8] if rate == 0 else socks:
            while True:
                try:
                    s.recv(2048)
                    replies += 1
                except (BlockingIOError, ConnectionRefusedError):
                    break
        if rate:
            time.sleep(tick)
    elapsed = time.monotonic() - started
    time.sleep(0.2)
    for s in socks:
        while True:
            try:
                s.recv(2048)
                replies += 1
            except (BlockingIOError, ConnectionRefusedError):
                break
        s.close()
    return {"sent": sent, "replies": replies, "seconds": round(elapsed, 2)}


if __name__ == "__main__":
    print(json.dumps(_flood(json.loads(sys.argv[1]))))

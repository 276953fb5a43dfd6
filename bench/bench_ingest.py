"""Gateway ingest throughput: verified and durably committed readings per second.

Measured in one run:

- ``verify_limit_per_s``: single-core P-256 verifications per second with
  `cryptography` (parsed key cached), the ceiling the gateway is compared with;
- for 1, 8 and 32 readings per CoAP message, on one core (server pinned to CPU 0, ingest
  in the gateway process) and on all cores (``[ingest] processes`` = cores, each
  receiving, verifying and storing on its own socket of the CoAP port): the real
  gateway (`python -m gateway run`: lean CoAP front end on uvloop, WAL +
  synchronous=FULL, group commit) fed by a load generator in a separate process;
  ``readings_per_s`` counts readings
  acknowledged with 2.04 (so: verified and committed) at the highest rate reached with
  one outstanding request per meter (CoAP NSTART=1) and many meters, each on its own
  UDP source port; ``p50_ms``/``p99_ms`` are acknowledgement latencies with the load
  paced at half that rate (measured from the scheduled send time).

The runs at 8 readings per message are repeated five times, each between two
verify-limit measurements of one second each (half-second samples swung by up to 30 %
on this VM), and each repeat's ratio is taken against the limit measured around it (a
slow or fast spell of the host moves both); the median repeat is kept and every repeat
is listed. Three repeats were too few: within one run they spread from 0.48 to 0.55,
so the median of three moved by as much between runs. ``verify_limit_per_s`` is the
median of all limit samples.

Ratios at 8 readings per message:

- ``ratio_one_core_at_8``: the one-core run, where the gateway (one process: CoAP,
  verification, storage) is pinned to CPU 0 and the load generator runs on CPU 1: the
  gateway's throughput on one core of its own;
- ``ratio_per_gateway_core_at_8``: the all-cores run, readings/s divided by the cores
  the gateway actually used (``gateway_cores_used``: CPU seconds of every gateway
  process per second of the max-rate window, read from /proc by the load generator),
  because on this machine the load generator shares those cores;
- ``ratio_per_core_at_8`` (the target, >= 0.5): the lower of those two, since the
  target holds per core both on one core and on all of them;
- ``ratio_per_machine_core_at_8``: the all-cores run divided by every core of the
  machine and the median limit, the load generator's share counted against the
  gateway (the definition used before the one-core run was pinned; kept for
  comparison);
- ``ratio_vs_median_limit`` in each run at 8 per message (with every repeat's in
  ``repeats_ratio_vs_median_limit``): the same per-core figures against
  ``verify_limit_per_s``, the median of every limit sample of the run, for
  comparison. Limit samples jump by up to 35 % for a second at a time on this VM
  (9,100 then 12,500 then 9,200) while the gateway's throughput does not follow, so
  a repeat next to such a sample gets a low ratio against the limit around it.

``aiocoap_at_8``: the all-cores run at 8 per message with ``[coap] front_end =
"aiocoap"``, for comparison with the default lean front end; aiocoap binds its own
socket, so it serves from the gateway process alone (one core at most).
"""

import json
import os
import pickle
import random
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

METERS = 64  # emulated meters = UDP source ports, one outstanding request each
READINGS_PER_METER = 2000  # signed once, replayed into a fresh database for every run
MAX_RATE_WARMUP_S = 0.4
MAX_RATE_S = float(os.environ.get("BENCH_MAX_RATE_S", 2.5))
PACED_S = 2.0
RETRANSMIT_S = 2.0
REPEATS_AT_8 = 5


def verify_limit(seconds=1.0):
    """P-256 verifications per second on one core, key parsed once."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    message = os.urandom(100)
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    algorithm = ec.ECDSA(hashes.SHA256())
    n = 0
    start = time.perf_counter()
    while True:
        for _ in range(200):
            public.verify(signature, message, algorithm)
        n += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def check_batch_rate(devices, per_message=8, seconds=1.0):
    """Readings/s through gateway.verify.check_batch on one core (decode + verify)."""
    from wattcore import exchange

    from gateway import verify

    device_id, pubkey, items = devices[0]
    payload = exchange.encode_batch(items[:per_message])
    credential = verify.Credential(device_id, pubkey, 10**6, False)
    policy = verify.Policy(300, 10**9)
    now = int(time.time())
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            assert verify.check_batch(payload, credential, now, policy).reason is None
        n += 20 * per_message
    return n / (time.perf_counter() - start)


def make_pool(path, meters, per_meter):
    """Sign ``per_meter`` readings for each of ``meters`` devices; pickle them to ``path``."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from wattcore import cose, reading

    now = int(time.time())
    devices = []
    for _ in range(meters):
        key = ec.generate_private_key(ec.SECP256R1())
        device_id = os.urandom(8)

        def sign(tbs, key=key):
            r, s = utils.decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        items = []
        for seq in range(1, per_meter + 1):
            # the 8-field reading of the protocol's size budget (32 fit in MAX_PAYLOAD)
            fields = {"dev": device_id, "seq": seq, "t": now - per_meter + seq, "st": 0,
                      "ei": 1_250_000 + 10 * seq, "ee": 380_000 + seq, "p": -1500, "mdl": 1}
            items.append(cose.sign1(reading.encode_payload(fields), device_id, sign))
        pubkey = key.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
        devices.append((device_id, pubkey, items))
    with open(path, "wb") as f:
        pickle.dump(devices, f)
    return devices


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory, devices, processes, cpus, front_end="lean"):
    from gateway import config as gwconfig
    from gateway import registry, store

    directory.mkdir(parents=True, exist_ok=True)
    port = free_udp_port()
    text = gwconfig.render({
        "gateway": {"data_dir": "."},
        # every simulated meter sends from 127.0.0.1: no per-source limit here
        "coap": {"bind": "127.0.0.1", "port": port, "front_end": front_end,
                 "max_datagrams_per_source": 0},
        "http": {"bind": "127.0.0.1", "port": 0},
        "ingest": {"processes": processes, "max_pending_readings": 100000},
        "log": {"level": "warning"},
    })
    path = directory / gwconfig.CONFIG_NAME
    path.write_text(text)
    cfg = gwconfig.load(path)
    conn = store.open_store(cfg.db_path)
    for device_id, pubkey, _ in devices:
        registry.add_device(conn, device_id, pubkey, "SDM120CT", "0x" + "11" * 20, "bench")
    conn.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.05)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {proc.stderr.read().decode()[-2000:]}")
            probe.sendto(b"\x40\x01\x00\x01\xb1t", ("127.0.0.1", port))  # CON GET /t
            try:
                probe.recv(512)
                return proc, port, cfg.db_path
            except TimeoutError:
                continue
    finally:
        probe.close()
    proc.kill()
    raise RuntimeError("gateway did not start")


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def one_run(workdir, pool_path, devices, per_message, cores, ncpu, front_end="lean"):
    if cores == 1:
        server_cpus, loadgen_cpus, processes = {0}, ({1} if ncpu > 1 else None), 0
    else:
        server_cpus, loadgen_cpus, processes = None, None, cores
    proc, port, db_path = start_server(
        Path(tempfile.mkdtemp(prefix=f"run-{per_message}-{cores}-{front_end}-", dir=workdir)),
        devices, processes, server_cpus, front_end)
    try:
        params = {"port": port, "pool": str(pool_path), "per_message": per_message,
                  "gateway_pid": proc.pid}
        out = subprocess.run(
            [sys.executable, __file__, "loadgen", json.dumps(params)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            preexec_fn=(lambda: os.sched_setaffinity(0, loadgen_cpus)) if loadgen_cpus else None,
        )
        if out.returncode != 0:
            raise RuntimeError("load generator failed: " + out.stderr[-2000:])
        result = json.loads(out.stdout)
    finally:
        stop_server(proc)
    conn = sqlite3.connect(db_path)
    stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    conn.close()
    if stored < result["acked_total"]:
        raise RuntimeError("acknowledged readings missing from the database")
    return {
        "readings_per_message": per_message,
        "cores": cores,
        "readings_per_s": round(result["readings_per_s"]),
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
        "paced_readings_per_s": round(result["paced_readings_per_s"]),
        "retransmissions": result["retransmissions"],
        "busy_answers": result["busy"],
        "gateway_cores_used": round(result["gateway_cores_used"], 2),
        "loadgen_cores_used": round(result["loadgen_cores_used"], 2),
    }


def _median(values):
    return sorted(values)[len(values) // 2]


def _paired_runs(workdir, pool_path, devices, cores, ncpu, limits):
    """The run at 8 per message, REPEATS_AT_8 times, each between two verify-limit
    measurements: its ratio is against the limit measured around it, so a slow or
    fast spell of the host moves both. Returns the median run with every repeat's
    readings/s and ratio."""
    runs = []
    for _ in range(REPEATS_AT_8):
        before = verify_limit()
        r = one_run(workdir, pool_path, devices, 8, cores, ncpu)
        after = verify_limit()
        limits += [before, after]
        per_core = r["readings_per_s"] / (r["gateway_cores_used"] if cores > 1 else 1)
        r["ratio_per_core"] = per_core / ((before + after) / 2)
        runs.append(r)
    median = dict(sorted(runs, key=lambda r: r["ratio_per_core"])[len(runs) // 2])
    median["repeats_readings_per_s"] = [r["readings_per_s"] for r in runs]
    median["repeats_ratio_per_core"] = [round(r["ratio_per_core"], 3) for r in runs]
    median["repeats_gateway_cores_used"] = [r["gateway_cores_used"] for r in runs]
    median["ratio_per_core"] = round(median["ratio_per_core"], 3)
    return median


def run():
    ncpu = len(os.sched_getaffinity(0))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    limits = [verify_limit()]
    with tempfile.TemporaryDirectory(prefix="wattshare-bench-") as tmp:
        workdir = Path(tmp)
        pool_path = workdir / "pool.pickle"
        devices = make_pool(pool_path, METERS, READINGS_PER_METER)
        check_rate = check_batch_rate(devices)
        runs = []
        for cores in sorted({1, ncpu}):
            for per_message in (1, 8, 32):
                if per_message == 8:
                    runs.append(_paired_runs(workdir, pool_path, devices, cores, ncpu, limits))
                else:
                    runs.append(one_run(workdir, pool_path, devices, per_message, cores, ncpu))
        aiocoap_at_8 = one_run(workdir, pool_path, devices, 8, ncpu, ncpu, "aiocoap")
    limits.append(verify_limit())
    limit = _median(limits)
    for r in runs:
        if "repeats_readings_per_s" in r:
            cores = r["repeats_gateway_cores_used"] if r["cores"] > 1 else [1] * REPEATS_AT_8
            ratios = [round(x / c / limit, 3)
                      for x, c in zip(r["repeats_readings_per_s"], cores, strict=True)]
            r["repeats_ratio_vs_median_limit"] = ratios
            r["ratio_vs_median_limit"] = _median(ratios)
    at_8 = next(r for r in runs if r["readings_per_message"] == 8 and r["cores"] == ncpu)
    one_at_8 = next(r for r in runs if r["readings_per_message"] == 8 and r["cores"] == 1)
    return {
        "verify_limit_per_s": round(limit),
        "verify_limit_samples": [round(x) for x in limits],
        "cores": ncpu,
        "runs": runs,
        "ratio_per_core_at_8": min(one_at_8["ratio_per_core"], at_8["ratio_per_core"]),
        "ratio_one_core_at_8": one_at_8["ratio_per_core"],
        "ratio_per_gateway_core_at_8": at_8["ratio_per_core"],
        "ratio_per_machine_core_at_8": round(at_8["readings_per_s"] / ncpu / limit, 3),
        "aiocoap_at_8": aiocoap_at_8,
        "aiocoap_ratio_per_machine_core_at_8": round(
            aiocoap_at_8["readings_per_s"] / ncpu / limit, 3),
        # the stateless checks alone (COSE + reading decode, then verify), one core,
        # 8 per message: the ceiling of one ingest process without CoAP and storage
        "check_batch_limit_per_s": round(check_rate),
        "meters": METERS,
        "front_end": "lean (gateway.coap_lean) on uvloop",
        "seconds": round(time.monotonic() - started, 1),
        # other work on the machine distorts every figure: 1-min load average around the run
        "loadavg_before": round(load_before, 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
    }


# -- load generator (separate process) -------------------------------------------------


class _Meter:
    __slots__ = ("sock", "items", "next_item", "mid", "token", "sent_at", "datagram", "count",
                 "scheduled_at", "retries")

    def __init__(self, items, index):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.items = items
        self.next_item = 0
        self.mid = random.randrange(1 << 16)
        self.token = None
        self.sent_at = None  # None: idle
        self.datagram = None
        self.count = 0
        self.scheduled_at = None
        self.retries = 0


def _datagram(meter, per_message, counter):
    # CoAP CON POST /r, Content-Format 60, 4-byte token (RFC 7252 section 3)
    chunk = meter.items[meter.next_item : meter.next_item + per_message]
    if not chunk:
        return None
    meter.next_item += len(chunk)
    meter.count = len(chunk)
    meter.mid = (meter.mid + 1) & 0xFFFF
    meter.token = counter.to_bytes(4, "big")
    n = len(chunk)
    head = bytes((0x80 | n,)) if n < 24 else bytes((0x98, n))
    return (bytes((0x44, 0x02, meter.mid >> 8, meter.mid & 0xFF)) + meter.token
            + b"\xb1r\x11\x3c\xff" + head + b"".join(chunk))


def _proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (field 3 first), or None if
    the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _gateway_pids(pid):
    """The gateway process and its children (the ingest processes)."""
    children = [int(e) for e in os.listdir("/proc") if e.isdigit()
                and (_proc_stat(e) or (None, None))[1] == str(pid)]
    return [pid] + children


def _cpu_seconds(pids):
    """User + system CPU seconds of ``pids`` (processes that are gone count 0)."""
    stats = [s for s in map(_proc_stat, pids) if s is not None]
    return sum(int(s[11]) + int(s[12]) for s in stats) / os.sysconf("SC_CLK_TCK")


def _loadgen(params):
    gateway = _gateway_pids(params["gateway_pid"])
    with open(params["pool"], "rb") as f:
        devices = pickle.load(f)
    port = params["port"]
    per_message = params["per_message"]
    address = ("127.0.0.1", port)
    meters = [_Meter(items, i) for i, (_, _, items) in enumerate(devices)]
    selector = selectors.DefaultSelector()
    for m in meters:
        selector.register(m.sock, selectors.EVENT_READ, m)
    counter = 0
    stats = {"acked": 0, "retransmissions": 0, "busy": 0, "latencies": [],
             "acked_total": 0}

    def send(m, now, scheduled=None):
        nonlocal counter
        counter += 1
        m.datagram = _datagram(m, per_message, counter)
        if m.datagram is None:
            return False
        m.sock.sendto(m.datagram, address)
        m.sent_at = now
        m.scheduled_at = scheduled if scheduled is not None else now
        m.retries = 0
        return True

    def receive(m, now, record):
        while True:
            try:
                data = m.sock.recv(8192)
            except BlockingIOError:
                return
            if len(data) < 4:
                continue
            kind, code = data[0] >> 4 & 3, data[1]
            if kind == 0:  # separate CON response: acknowledge it
                m.sock.sendto(bytes((0x60, 0, data[2], data[3])), address)
            if code == 0 or m.sent_at is None or data[4 : 4 + (data[0] & 0xF)] != m.token:
                continue
            if code == 0x44:  # 2.04
                stats["acked_total"] += m.count
                if record:
                    stats["acked"] += m.count
                    stats["latencies"].append(now - m.scheduled_at)
                m.sent_at = None
            elif code == 0xA3:  # 5.03: retry the same readings after a pause
                stats["busy"] += 1
                m.next_item -= m.count
                m.sent_at = None
            else:
                raise RuntimeError(f"unexpected response 0x{code:02x}: {data.hex()}")

    def poll(timeout, record):
        now = time.perf_counter()
        for key, _ in selector.select(timeout):
            receive(key.data, now, record)
        for m in meters:
            if m.sent_at is not None and now - m.sent_at > RETRANSMIT_S * (1 + m.retries):
                m.sock.sendto(m.datagram, address)  # CoAP retransmission: same message id
                m.retries += 1
                stats["retransmissions"] += 1

    # Phase 1: highest rate with one outstanding request per meter.
    start = time.perf_counter()
    measure_from = start + MAX_RATE_WARMUP_S
    end = measure_from + MAX_RATE_S
    recording = False
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if not recording and now >= measure_from:
            recording = True
            measure_from = now
            cpu_from = _cpu_seconds(gateway), time.process_time()
        for m in meters:
            if m.sent_at is None:
                send(m, now)
        poll(0.01, recording)
    window = time.perf_counter() - measure_from
    if not stats["acked"]:
        raise RuntimeError(
            f"no reading was acknowledged in the {window:.1f} s measuring window: the gateway "
            "is stuck or the machine is too loaded to measure (run the benchmark alone)")
    max_rate = stats["acked"] / window
    gateway_cores = (_cpu_seconds(gateway) - cpu_from[0]) / window
    loadgen_cores = (time.process_time() - cpu_from[1]) / window
    if any(m.next_item >= len(m.items) for m in meters):
        raise RuntimeError("the pool of signed readings ran out: raise READINGS_PER_METER")
    # Let outstanding requests finish.
    deadline = time.perf_counter() + 5
    while any(m.sent_at is not None for m in meters) and time.perf_counter() < deadline:
        poll(0.01, False)

    # Phase 2: paced at half that rate; latency from the scheduled send time.
    stats["acked"], stats["latencies"] = 0, []
    interval = per_message / (max_rate / 2)
    start = time.perf_counter()
    end = start + PACED_S
    next_send = start
    backlog = []  # scheduled times of messages waiting for an idle meter
    turn = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        while next_send <= now:
            backlog.append(next_send)
            next_send += interval
        while backlog:
            for _ in range(len(meters)):
                m = meters[turn % len(meters)]
                turn += 1
                if m.sent_at is None:
                    break
            else:
                break
            if not send(m, now, backlog.pop(0)):
                break
        poll(min(0.005, max(0.0, next_send - time.perf_counter())), True)
    paced_elapsed = time.perf_counter() - start
    deadline = time.perf_counter() + 5
    while any(m.sent_at is not None for m in meters) and time.perf_counter() < deadline:
        poll(0.01, True)
    latencies = sorted(stats["latencies"]) or [float("nan")]
    return {
        "readings_per_s": max_rate,
        "paced_readings_per_s": stats["acked"] / paced_elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "retransmissions": stats["retransmissions"],
        "busy": stats["busy"],
        "acked_total": stats["acked_total"],
        "gateway_cores_used": gateway_cores,
        "loadgen_cores_used": loadgen_cores,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "loadgen":
        print(json.dumps(_loadgen(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run(), indent=2))

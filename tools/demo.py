"""`make demo`: an emulated neighbourhood, end to end, on this machine.

Three homes on one street, each with a simulated CT meter (tools.meter_sim) and the
real firmware running in a MicroPython VM (tools.emulated_device), send signed readings
over CoAP to a real gateway (`wattshare gateway run`), which verifies and stores them.
The demo commissions everything the way a technician would (`wattshare gateway init`,
`device add` with the key each device printed), lets the street run, then re-verifies
every stored reading's signature independently and prints the gateway status.

    python -m tools.demo [--seconds 40]

Everything runs on loopback; the work folder is out/demo/ (wiped at each run).
The chain part (batching onto a local anvil, settlement) is not wired in yet: see the
open issue on the chain and docs/architecture.md.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "out" / "demo"
PY = sys.executable

# (label, meter model, simulator profile, owner account)
STREET = [
    ("resident with rooftop PV", "sdm120ct", "pv-household", "0x" + "11" * 20),
    ("the school next door", "sdm630ct", "school", "0x" + "22" * 20),
    ("a household", "pzem004t-v3", "household", "0x" + "33" * 20),
]
MODEL_NAMES = {"sdm120ct": "SDM120CT", "sdm630ct": "SDM630CT", "pzem004t-v3": "PZEM004T_V3"}


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """Background processes, all stopped on exit."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], log: Path, env=None) -> subprocess.Popen:
        f = open(log, "w")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.procs.append((name, p))
        return p

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _name, p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text()) if log.exists() else None
        if m:
            return m
        if proc.poll() is not None:
            raise SystemExit(f"demo: {log.name}: process exited:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {pattern!r} in {log}")


def wattshare(*args: str, env) -> str:
    proc = subprocess.run(
        [PY, "-m", "tools.cli", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo: wattshare {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def reverify(db: Path) -> tuple[int, int]:
    """Check every stored reading's signature again, from its exact bytes."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from wattcore import cose

    con = sqlite3.connect(db)
    keys = {}
    good = bad = 0
    for dev, pub in con.execute("SELECT id, pubkey FROM devices"):
        keys[bytes(dev)] = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(pub))
    for (raw,) in con.execute("SELECT cose FROM readings"):
        s = cose.decode_sign1(bytes(raw))
        sig = utils.encode_dss_signature(
            int.from_bytes(s.signature[:32], "big"), int.from_bytes(s.signature[32:], "big")
        )
        try:
            keys[s.kid].verify(sig, s.to_be_signed(), ec.ECDSA(hashes.SHA256()))
            good += 1
        except (InvalidSignature, KeyError):
            bad += 1
    return good, bad


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--seconds", type=float, default=40, help="how long the street runs")
    args = ap.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    data = WORK / "gateway"
    env = dict(
        os.environ,
        WATTSHARE_KEY_PASSPHRASE="demo-only-passphrase",
        WATTSHARE_CONFIG=str(data / "gateway.toml"),
    )
    procs = Procs()
    try:
        coap_port, http_port = free_udp_port(), free_tcp_port()
        say(f"1/5 technician: wattshare gateway init --data {data.relative_to(REPO)}")
        wattshare(
            "gateway",
            "init",
            "--data",
            str(data),
            "--coap-port",
            str(coap_port),
            "--http-port",
            str(http_port),
            env=env,
        )

        say("2/5 installer: start a simulated meter and provision each device")
        devices = []
        for i, (label, meter, profile, owner) in enumerate(STREET):
            log = WORK / f"meter{i}.log"
            p = procs.start(
                f"meter{i}",
                [
                    PY,
                    "-m",
                    "tools.meter_sim",
                    "--meter",
                    meter,
                    "--profile",
                    profile,
                    "--tcp",
                    "127.0.0.1:0",
                    "--speed",
                    "60",
                    "--seed",
                    str(i),
                ],
                log,
            )
            port = int(wait_for_line(log, r"listening tcp 127\.0\.0\.1:(\d+)", p, 30).group(1))
            storage = WORK / f"device{i}"
            hwid = f"{0xA0 + i:02x}00000000{i:02x}"
            device_args = [
                "--storage",
                str(storage),
                "--meter",
                meter,
                "--hwid",
                hwid,
                "--meter-tcp",
                f"127.0.0.1:{port}",
                "--gateway",
                f"127.0.0.1:{coap_port}",
                "--interval",
                "2",
            ]
            out = subprocess.run(
                [PY, "-m", "tools.emulated_device", *device_args, "--provision"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            m = re.search(r"device_id=([0-9a-f]{16}) public_key=([0-9a-f]{130})", out)
            if not m:
                raise SystemExit(f"demo: device {i} did not print its key:\n{out}")
            wattshare(
                "device",
                "add",
                "--id",
                m.group(1),
                "--pubkey",
                m.group(2),
                "--model",
                MODEL_NAMES[meter],
                "--owner",
                owner,
                "--label",
                label,
                env=env,
            )
            say(f"    {label}: {meter} ({profile}) -> device {m.group(1)}")
            devices.append(device_args)

        say(
            f"3/5 gateway: wattshare gateway run (CoAP udp/{coap_port}, "
            f"status page http://127.0.0.1:{http_port}/)"
        )
        glog = WORK / "gateway.log"
        gw = procs.start("gateway", [PY, "-m", "tools.cli", "gateway", "run"], glog, env=env)
        time.sleep(2)
        if gw.poll() is not None:
            raise SystemExit(f"demo: the gateway exited:\n{glog.read_text()[-2000:]}")

        say(f"4/5 the street runs for {args.seconds:.0f} s (firmware in MicroPython VMs)")
        for i, device_args in enumerate(devices):
            procs.start(
                f"device{i}",
                [PY, "-m", "tools.emulated_device", *device_args],
                WORK / f"device{i}.log",
            )
        db = data / "gateway.sqlite3"
        t_end = time.monotonic() + args.seconds
        while time.monotonic() < t_end:
            time.sleep(5)
            n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            say(f"    {n} signed readings verified and stored so far")

        say("5/5 results")
        print(wattshare("gateway", "status", env=env))
        say("latest reading per meter (power: export < 0):")
        con = sqlite3.connect(db)
        for label, p, ei, ee in con.execute(
            "SELECT d.label, r.p, r.ei, r.ee FROM readings r JOIN devices d ON d.id = r.device "
            "WHERE r.id IN (SELECT MAX(id) FROM readings GROUP BY device) ORDER BY d.label"
        ):
            say(
                f"    {label:26s} power {p if p is not None else '-':>7} W   "
                f"import {ei if ei is not None else '-':>10} Wh   "
                f"export {ee if ee is not None else '-':>10} Wh"
            )
        good, bad = reverify(db)
        say(f"re-verified every stored reading from its exact signed bytes: {good} good, {bad} bad")
        if good == 0 or bad:
            say("FAILED: expected stored readings, all with valid signatures")
            return 1
        say(
            "done. Next on the roadmap: interval batching onto a local anvil chain and "
            "on-chain settlement (contracts/ are tested with titanoboa)."
        )
        return 0
    finally:
        procs.stop()
        say(f"logs and the gateway database are in {WORK.relative_to(REPO)}/ until the next run")


if __name__ == "__main__":
    sys.exit(main())

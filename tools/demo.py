"""`make demo`: an emulated neighbourhood, end to end, on this machine.

Three homes on one street, each with a simulated CT meter (tools.meter_sim) and the
real firmware running in a MicroPython VM (tools.emulated_device), send signed readings
over CoAP to a real gateway (`wattshare gateway run`), which verifies and stores them.
The demo commissions everything the way a technician would (`wattshare gateway init`,
`device add` with the key each device printed), lets the street run, then re-verifies
every stored reading's signature independently and prints the gateway status.

Part two settles energy on a local anvil chain. Settlement intervals are 15 minutes of
wall-clock time, longer than a demo should take, so it replays the last closed morning
hour of three community members (a resident with rooftop PV who gives 40 % of the
surplus to the school, the school, a household): readings from the same meter
simulator profiles, signed with the same cores the firmware runs, sent through the
gateway's real CoAP server. Then, as a technician and the community admin would:
`wattshare chain deploy`, `community add-meter`, `community producer-key`, `community
fund`, `chain run --once`, `export-allocations`, and `verify` of one reading down to a
storage proof against a block header.

    python -m tools.demo [--seconds 40]

Everything runs on loopback; the work folder is out/demo/ (wiped at each run).
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


# Part two: the community on chain (anvil development accounts own the meters)
COMMUNITY = [
    # (label, meter, profile, anvil account of the owner)
    ("resident (PV roof)", "sdm120ct", "pv-household", 3),
    ("school", "sdm630ct", "school", 4),
    ("household", "sdm120ct", "household", 5),
]
HISTORY_STEP_S = 60  # one reading a minute in the replayed hour


def history_window(now: float) -> int:
    """Start of the latest daylight hour (09:00-14:00 UTC) that is over, grace included.

    It stays within the last 24 h, the batcher's default backfill on a first start.
    """
    day = int(now) // 86400 * 86400
    over = [day + h * 3600 for h in (13, 12, 11, 10, 9) if day + h * 3600 + 3600 + 180 <= now]
    return over[0] if over else day - 86400 + 13 * 3600


def member_readings(meter_id: str, profile: str, seed: int, t0: int) -> list[dict]:
    from tools.meter_sim import ManualClock, MeterModel, get_meter

    model = MeterModel(get_meter(meter_id), profile, ManualClock(t0), seed=seed, start=t0 - 600)
    code = get_meter(meter_id).model_code
    rows = []
    for k, t in enumerate(range(t0, t0 + 3600 + 1, HISTORY_STEP_S)):
        s = model.sample_at(t)
        rows.append(
            {
                "seq": k,
                "t": t,
                "st": 0,
                "mdl": code,
                "ei": int(s.import_Wh),
                "ee": int(s.export_Wh),
                "p": round(s.power_W),
                "u": round(s.voltage_dV),
                "i": round(s.current_mA),
                "f": round(s.frequency_cHz),
                "pf": max(-1000, min(1000, round(s.power_factor_milli))),
            }
        )
    return rows


async def send_signed(port: int, priv: int, dev: bytes, rows: list[dict]) -> None:
    """Sign with the firmware's cores and POST /r in batches of 8, as a device does."""
    import aiocoap
    from wattcore import cose, exchange, p256, reading

    signed = [
        cose.sign1(reading.encode_payload({"dev": dev, **r}), dev, lambda tbs: p256.sign(priv, tbs))
        for r in rows
    ]
    ctx = await aiocoap.Context.create_client_context()
    try:
        # 6 per message: aiocoap switches to block-wise transfer above 1024 bytes,
        # which the gateway does not take (devices send whole datagrams)
        for k in range(0, len(signed), 6):
            req = aiocoap.Message(
                code=aiocoap.POST,
                uri=f"coap://127.0.0.1:{port}/r",
                content_format=exchange.CONTENT_FORMAT_CBOR,
                payload=exchange.encode_batch(signed[k : k + 6]),
            )
            resp = await ctx.request(req).response
            if resp.code != aiocoap.CHANGED:
                raise SystemExit(f"demo: gateway answered {resp.code}: {resp.payload!r}")
    finally:
        await ctx.shutdown()


def part_two(env, coap_port: int, data: Path) -> None:
    import asyncio
    import csv

    from wattcore import p256

    from gateway.chain.anvil import Anvil

    keys = Anvil(WORK).account_keys()
    from eth_account import Account

    t0 = history_window(time.time())
    say(
        f"6/9 community: replay {time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0))} UTC "
        f"+ 1 h of three members through the gateway's CoAP server"
    )
    members = {}
    for i, (label, meter, _profile, acct) in enumerate(COMMUNITY):
        priv = p256.private_key_from_random(os.urandom)
        dev = b"WS" + bytes([0xC0 + i, 0, 0, 0, 0, i])
        wattshare(
            "device",
            "add",
            "--id",
            dev.hex(),
            "--pubkey",
            p256.public_key(priv).hex(),
            "--model",
            meter,  # the boards/meters/ id names the model too
            "--owner",
            Account.from_key(keys[acct]).address,
            "--label",
            label,
            env=env,
        )
        members[label] = (priv, dev)
    time.sleep(2)  # the running gateway picks up registry changes every second
    for i, (label, meter, profile, _acct) in enumerate(COMMUNITY):
        priv, dev = members[label]
        rows = member_readings(meter, profile, 10 + i, t0)
        asyncio.run(send_signed(coap_port, priv, dev, rows))
        exported = rows[-1]["ee"] - rows[0]["ee"]
        imported = rows[-1]["ei"] - rows[0]["ei"]
        say(f"    {label:20s} {len(rows)} readings, imported {imported} Wh, exported {exported} Wh")

    say("7/9 admin: wattshare chain deploy (embedded anvil, state in the data folder)")
    print(wattshare("chain", "deploy", env=env).rstrip())
    for _priv, dev in members.values():
        wattshare("community", "add-meter", "--device", dev.hex(), env=env)
    say("    resident: community producer-key --static school=4000 (40 % to the school)")
    wattshare(
        "community",
        "producer-key",
        "--meter",
        "resident (PV roof)",
        "--static",
        "school=4000",
        "--anvil-account",
        "3",
        env=env,
    )
    for _label, _, _, acct in COMMUNITY[1:]:
        wattshare(
            "community",
            "fund",
            "--account",
            Account.from_key(keys[acct]).address,
            "--amount",
            str(10**24),
            env=env,
        )

    say("8/9 gateway: wattshare chain run --once (batch, sign, send, confirm)")
    print(wattshare("chain", "run", "--once", env=env).rstrip())
    csv_path = WORK / "allocations.csv"
    wattshare(
        "export-allocations",
        "--from",
        str(t0 // 900),
        "--to",
        str((t0 + 3600) // 900),
        "-o",
        str(csv_path),
        env=env,
    )
    rows = list(csv.DictReader(csv_path.open()))
    say(f"    settled flows ({csv_path.relative_to(REPO)}):")
    for r in rows:
        say("    " + ", ".join(f"{k}={v}" for k, v in r.items()))
    if not any(r.get("kind") == "p2p" for r in rows):
        raise SystemExit("demo: FAILED: no peer-to-peer allocation was settled")

    say("9/9 anyone: wattshare verify (signature, Merkle path, root in contract storage)")
    con = sqlite3.connect(data / "gateway.sqlite3")
    rid = con.execute(
        "SELECT id FROM readings WHERE device = ? ORDER BY seq LIMIT 1 OFFSET 20",
        (members["school"][1],),
    ).fetchone()[0]
    print(wattshare("verify", "--reading", str(rid), env=env).rstrip())


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
        say(f"1/9 technician: wattshare gateway init --data {data.relative_to(REPO)}")
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

        say("2/9 installer: start a simulated meter and provision each device")
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
                meter,  # the boards/meters/ id names the model too
                "--owner",
                owner,
                "--label",
                label,
                env=env,
            )
            say(f"    {label}: {meter} ({profile}) -> device {m.group(1)}")
            devices.append(device_args)

        say(
            f"3/9 gateway: wattshare gateway run (CoAP udp/{coap_port}, "
            f"status page http://127.0.0.1:{http_port}/)"
        )
        glog = WORK / "gateway.log"
        gw = procs.start("gateway", [PY, "-m", "tools.cli", "gateway", "run"], glog, env=env)
        time.sleep(2)
        if gw.poll() is not None:
            raise SystemExit(f"demo: the gateway exited:\n{glog.read_text()[-2000:]}")

        say(f"4/9 the street runs for {args.seconds:.0f} s (firmware in MicroPython VMs)")
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

        say("5/9 results")
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
        part_two(env, coap_port, data)
        say("done.")
        return 0
    finally:
        procs.stop()
        say(f"logs and the gateway database are in {WORK.relative_to(REPO)}/ until the next run")


if __name__ == "__main__":
    sys.exit(main())

"""The chain commands end to end on the embedded anvil: gateway init, chain deploy,
community add-meter / producer-key / fund, chain run --once, chain status, export-proof,
verify (by reading id and by bundle + RPC URL), export-allocations."""

import csv
import json
import signal
import subprocess
import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from chain_community import STEP
from eth_account import Account
from gw_testbed import MeterKey
from wattcore import exchange

from gateway import config as gwconfig
from gateway import store
from gateway.chain import allocations, node, rpc
from gateway.chain import anvil as anvil_mod
from gateway.verify import Credential, Policy, check_batch
from gateway.writer import GroupStore
from tools.cli import main

L = 900
ROOT = Path(__file__).resolve().parents[2]


def _store(db, meter, seqs_times, counters):
    conn = store.open_store(db)
    try:
        signed = [meter.reading(seq, t=t, ei=counters(t)[0], ee=counters(t)[1], p=0)
                  for seq, t in seqs_times]
        cred = Credential(meter.device_id, meter.pubkey, 10**6, False)
        for k in range(0, len(signed), 32):
            checked = check_batch(exchange.encode_batch(signed[k:k + 32]), cred,
                                  int(time.time()), Policy(300, 10**9))
            assert checked.reason is None
            GroupStore(conn).commit([("store", 0, meter.device_id, checked.readings, 0)])
    finally:
        conn.close()


def test_commission_deploy_submit_verify_export(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WATTSHARE_KEY_PASSPHRASE", "correct horse battery")
    data = tmp_path / "gw"
    assert main(["gateway", "init", "--data", str(data)]) == 0
    cfgp = str(data / gwconfig.CONFIG_NAME)
    keys = anvil_mod.Anvil(tmp_path).account_keys()
    producer, school = MeterKey(), MeterKey()
    owners = {id(producer): 3, id(school): 4}
    for m, label in ((producer, "pv-roof"), (school, "school")):
        owner = Account.from_key(keys[owners[id(m)]]).address
        assert main(["device", "add", "--config", cfgp, "--id", m.device_id.hex(),
                     "--pubkey", m.pubkey.hex(), "--model", "SDM120CT", "--owner", owner,
                     "--label", label]) == 0
    # not deployed yet: a clear error
    assert main(["chain", "run", "--config", cfgp, "--once"]) == 2
    assert "chain deploy" in capsys.readouterr().err

    # a node runs as under `wattshare chain run` (state in the data folder); the community
    # was set up before the hours replayed below: its clock goes back for the set-up
    first = int(time.time()) // L - 4
    t0 = first * L
    with anvil_mod.Anvil(data) as live:
        (data / node.URL_FILE).write_text(live.url)
        live_port = rpc.Web3Chain.connect(live.url, live.chain_id)
        live_port.request("evm_setTime", [t0 - L])
        assert main(["chain", "deploy", "--config", cfgp]) == 0
        out = capsys.readouterr().out
        cfg = gwconfig.load(cfgp)
        assert cfg.chain.contract and cfg.chain.contract in out
        assert main(["chain", "deploy", "--config", cfgp]) == 1  # not twice by accident
        assert "already deployed" in capsys.readouterr().err
        assert main(["community", "add-meter", "--config", cfgp, "--device",
                     producer.device_id.hex(), school.device_id.hex()]) == 0
        out = capsys.readouterr().out
        assert "(pv-roof) is meter 1" in out and "(school) is meter 2" in out
        assert main(["community", "producer-key", "--config", cfgp, "--meter", "pv-roof",
                     "--static", "school=4000", "--anvil-account", "3"]) == 0
        school_owner = Account.from_key(keys[4]).address
        assert main(["community", "fund", "--config", cfgp, "--account", school_owner,
                     "--amount", str(10**24)]) == 0
        capsys.readouterr()
        live_port.request("evm_setTime", [int(time.time())])

        times = list(range(t0, t0 + 2 * L + 1, STEP))
        _store(cfg.db_path, producer, enumerate(times, 1),
               lambda t: (10, 50 + 12_000 * (t - t0) // 3600))
        _store(cfg.db_path, school, enumerate(times, 1),
               lambda t: (10 + 3_000 * (t - t0) // 3600, 0))

        assert main(["chain", "run", "--config", cfgp, "--once"]) == 0
        out = capsys.readouterr().out
        # two intervals and the meters' signed readings at their boundaries, one transaction
        assert f"built intervals {first}-{first + 1} (" in out
        assert "4 signed boundary readings, 2 meters, 0 gaps" in out
        assert f"intervals {first}-{first + 1}: confirmed" in out
        assert main(["chain", "run", "--config", cfgp, "--once"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("nothing due until ") and \
            "once its end boundary's signed readings are in (420 s after it ends)" in out
        assert main(["chain", "status", "--config", cfgp, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["outbox"]["confirmed"] == 1
        assert status["gateway_authorised"] is True and status["mapped_meters"] == 2
        assert status["agreement"]["agree"] and status["agreement"]["on_chain"] == 1
        assert main(["chain", "status", "--config", cfgp]) == 0
        assert (f"chain:     agrees with the outbox at block {status['node']['block']}: "
                "1 intervals submitted and confirmed") in capsys.readouterr().out
        # an outbox that lost a row and got it back with new salts: a root that is not
        # the chain's (its readings cannot be proven), said plainly
        conn = store.open_store(cfg.db_path)
        root = conn.execute("SELECT root FROM chain_outbox WHERE interval = ?",
                            (first,)).fetchone()[0]
        conn.execute("UPDATE chain_outbox SET root = ? WHERE interval = ?",
                     (bytes(32 - 1) + b"\x01", first))
        assert main(["chain", "status", "--config", cfgp]) == 0
        text = capsys.readouterr().out
        assert "chain:     DISAGREES with the outbox" in text
        assert f"  on chain with another root: {first}" in text
        conn.execute("UPDATE chain_outbox SET root = ? WHERE interval = ?", (root, first))
        conn.close()

        conn = store.open_store(cfg.db_path)
        rid = conn.execute("SELECT id FROM readings WHERE t = ? AND device = ?",
                           (t0 + 300, school.device_id)).fetchone()[0]
        conn.close()
        assert main(["verify", "--config", cfgp, "--reading", str(rid)]) == 0
        assert "VALID" in capsys.readouterr().out
        bundle_path = tmp_path / "proof.json"
        assert main(["export-proof", "--config", cfgp, "--reading", str(rid),
                     "-o", str(bundle_path)]) == 0
        # a third party: the bundle and an RPC URL, no gateway config
        assert main(["verify", "--bundle", str(bundle_path), "--rpc", live.url]) == 0
        assert "VALID" in capsys.readouterr().out
        genuine = json.loads(bundle_path.read_text())
        # ... with two nodes that must agree (here the same one twice), and confirmations
        assert main(["verify", "--bundle", str(bundle_path), "--rpc", live.url,
                     "--rpc", live.url, "--confirmations", "1"]) == 0
        assert "second node" in capsys.readouterr().out
        assert main(["verify", "--bundle", str(bundle_path), "--rpc", live.url,
                     "--confirmations", "1000"]) == 1
        assert "[FAIL] confirmations" in capsys.readouterr().out
        forged = json.loads(bundle_path.read_text())
        forged["salt"] = "00" * 32
        bundle_path.write_text(json.dumps(forged))
        assert main(["verify", "--bundle", str(bundle_path), "--rpc", live.url]) == 1
        assert "INVALID" in capsys.readouterr().out

        out_csv = tmp_path / "alloc.csv"
        assert main(["export-allocations", "--config", cfgp, "--from", str(first),
                     "--to", str(first + 1), "-o", str(out_csv)]) == 0
        rows = list(csv.DictReader(out_csv.open()))
        p2p = [r for r in rows if r["kind"] == "p2p"]
        # producer exports 3000 Wh per interval, 40 % to the school (750 Wh import)
        assert [(r["interval"], r["producer"], r["consumer"], r["wh"]) for r in p2p] == [
            (str(first), "1", "2", "750"), (str(first + 1), "1", "2", "750")]
        # readable columns next to the exact ones: names, local time, kWh, whole tokens
        r = p2p[0]
        assert (r["producer_name"], r["consumer_name"], r["kwh"], r["token"]) == (
            "pv-roof", "school", "0.750", "SUN")
        assert Decimal(r["tokens_whole"]) * 10**18 == int(r["tokens"]) > 0
        start = datetime.fromisoformat(r["interval_start"])
        assert start.timestamp() == first * L and start.utcoffset() is not None
        assert list(rows[0]) == list(allocations.COLUMNS)
        assert main(["export-allocations", "--config", cfgp, "-o", str(out_csv)]) == 2
        capsys.readouterr()
        assert main(["chain", "node", "--config", cfgp]) == 0  # already running: its URL
        assert capsys.readouterr().out == f"rpc: {live.url} (the embedded anvil, already " \
            "running)\n"

    # no `chain run` any more: `chain node` runs the embedded node for a verifier
    bundle_path.write_text(json.dumps(genuine))
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "chain", "node", "--config",
                             cfgp], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("rpc: http://127.0.0.1:"), line
        url = line.split()[1]
        assert main(["verify", "--bundle", str(bundle_path), "--rpc", url]) == 0
        assert "VALID" in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (data / node.URL_FILE).exists()  # it said where it ran, and no longer


@pytest.mark.parametrize("argv", [["chain", "status"], ["verify", "--reading", "1"]])
def test_missing_config_is_a_clear_error(tmp_path, capsys, argv):
    assert main(argv + ["--config", str(tmp_path / "none.toml")]) == 2
    assert "gateway init" in capsys.readouterr().err


def test_docs_list_the_csv_columns_of_the_file():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "chain.md").read_text()
    line = next(x for x in doc.splitlines() if x.startswith("CSV columns: `"))
    assert tuple(c.strip() for c in line.split("`")[1].split(",")) == allocations.COLUMNS

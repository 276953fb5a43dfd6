"""The commissioning CLI: wattshare gateway init/status/run, wattshare device ..."""

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gw_testbed import MeterKey, coap_client, coap_request, running_gateway
from wattcore import exchange

from gateway import config, keystore
from tools.cli import main

PASS = "correct horse battery"
OWNER = "0x52908400098527886E0F7030069857D2E4169EE7"  # EIP-55 test vector


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def initialised(tmp_path_factory):
    # One `gateway init` (scrypt makes each key take a second); tests get copies.
    data = tmp_path_factory.mktemp("template") / "ws"
    os.environ[keystore.ENV_PASSPHRASE] = PASS
    try:
        code = main(["gateway", "init", "--data", str(data), "--coap-port", "0",
                     "--http-port", str(free_tcp_port())])
    finally:
        del os.environ[keystore.ENV_PASSPHRASE]
    assert code == 0
    return data


@pytest.fixture
def gateway_dir(initialised, tmp_path, monkeypatch):
    monkeypatch.setenv(keystore.ENV_PASSPHRASE, PASS)
    data = tmp_path / "ws"
    shutil.copytree(initialised, data)
    return data


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_the_command_groups():
    out = subprocess.run([str(Path(sys.executable).parent / "wattshare"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "gateway" in out and "device" in out
    out = subprocess.run([sys.executable, "-m", "gateway", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in ("init", "run", "status"):
        assert command in out


def test_the_service_entry_point_loads_no_chain_libraries():
    # `python -m gateway run` (the systemd unit) must stay light on a Raspberry Pi.
    code = ("import sys, gateway.__main__, gateway.app, gateway.worker; "
            "print(sorted(m for m in ('web3', 'eth_account', 'py_ecc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_init_writes_config_database_and_encrypted_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(keystore.ENV_PASSPHRASE, PASS)
    gateway_dir = tmp_path / "ws"
    code, out, err = run(capsys, "gateway", "init", "--data", str(gateway_dir))
    assert code == 0, err
    assert PASS not in out + err
    cfg = config.load(gateway_dir / "gateway.toml")
    assert cfg.data_dir == gateway_dir and cfg.db_path.exists()
    key = cfg.keystore_path
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    address = keystore.address(key)
    assert len(keystore.unlock(key, PASS)) == 32
    # Refuses to overwrite without --force; --force keeps the key.
    code, _, err = run(capsys, "gateway", "init", "--data", str(gateway_dir))
    assert code == 2 and "--force" in err
    code, out, _ = run(capsys, "gateway", "init", "--data", str(gateway_dir), "--force")
    assert code == 0 and "kept the existing key" in out
    assert keystore.address(key) == address and address in out
    assert config.load(gateway_dir / "gateway.toml").coap.port == 5683  # rewritten


def test_init_without_a_passphrase_source_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(keystore.ENV_PASSPHRASE, raising=False)
    code, _, err = run(capsys, "gateway", "init", "--data", str(tmp_path / "x"))
    assert code == 1 and "--passphrase-file" in err
    assert not (tmp_path / "x" / "gateway.toml").exists()
    short = tmp_path / "short"
    short.write_text("abc\n")
    code, _, err = run(capsys, "gateway", "init", "--data", str(tmp_path / "x"),
                       "--passphrase-file", str(short))
    assert code == 1 and "too short" in err and "abc" not in err


def test_device_add_list_show_revoke(gateway_dir, capsys):
    conf = str(gateway_dir / "gateway.toml")
    m = MeterKey()
    code, out, err = run(capsys, "device", "add", "--config", conf, "--id", m.device_id.hex(),
                         "--pubkey", m.pubkey.hex(), "--model", "SDM630CT",
                         "--owner", OWNER.lower(), "--label", "Bakery roof",
                         "--ct-rating-a", "200")
    assert code == 0, err
    assert OWNER in out  # stored checksummed
    code, _, err = run(capsys, "device", "add", "--config", conf, "--id", m.device_id.hex(),
                       "--pubkey", m.pubkey.hex(), "--model", "SDM630CT", "--owner", OWNER,
                       "--label", "again")
    assert code == 1 and "already registered" in err
    code, out, _ = run(capsys, "device", "list", "--config", conf)
    assert m.device_id.hex() in out and "Bakery roof" in out and "active" in out
    code, out, _ = run(capsys, "device", "show", "--config", conf, m.device_id.hex(), "--json")
    shown = json.loads(out)
    assert shown["ct_rating_a"] == 200 and shown["model"] == "SDM630CT"
    assert shown["pubkey"] == m.pubkey.hex() and shown["state"]["readings"] == 0
    code, out, _ = run(capsys, "device", "revoke", "--config", conf, m.device_id.hex())
    assert code == 0
    code, out, _ = run(capsys, "device", "list", "--config", conf, "--json")
    assert json.loads(out)[0]["status"] == "revoked"


@pytest.mark.parametrize("flag, value, message", [
    ("--id", "abcd", "8 bytes"),
    ("--id", "zz" * 8, "not hex"),
    ("--pubkey", "04" + "11" * 64, "not a point on P-256"),
    ("--pubkey", "0102", "65 bytes"),
    ("--owner", "0x52908400098527886e0F7030069857D2E4169EE7", "checksum"),
    ("--owner", "0x1234", "20-byte"),
])
def test_device_add_refuses_bad_values(gateway_dir, capsys, flag, value, message):
    m = MeterKey()
    args = {"--id": m.device_id.hex(), "--pubkey": m.pubkey.hex(), "--owner": OWNER}
    args[flag] = value
    argv = ["device", "add", "--config", str(gateway_dir / "gateway.toml"), "--model",
            "SDM120CT", "--label", "x"]
    for k, v in args.items():
        argv += [k, v]
    code, _, err = run(capsys, *argv)
    assert code == 1 and message in err


def test_compressed_public_key_is_accepted(gateway_dir, capsys):
    m = MeterKey()
    compressed = bytes([2 + (m.pubkey[-1] & 1)]) + m.pubkey[1:33]
    code, _, err = run(capsys, "device", "add", "--config", str(gateway_dir / "gateway.toml"),
                       "--id", m.device_id.hex(), "--pubkey", compressed.hex(), "--model",
                       "PZEM004T_V3", "--owner", OWNER, "--label", "pzem")
    assert code == 0, err
    code, out, _ = run(capsys, "device", "show", "--config", str(gateway_dir / "gateway.toml"),
                       m.device_id.hex(), "--json")
    assert json.loads(out)["pubkey"] == m.pubkey.hex()


def test_device_import_registers_every_line_or_none(gateway_dir, tmp_path, capsys):
    conf = str(gateway_dir / "gateway.toml")
    meters = [MeterKey() for _ in range(3)]
    lines = ["id,pubkey,model,owner,label,ct_rating_a"]
    lines += [f"{m.device_id.hex()},{m.pubkey.hex()},sdm120ct,{OWNER.lower()},house {i},"
              for i, m in enumerate(meters[:2])]
    good = tmp_path / "good.csv"
    good.write_text("\n".join(lines) + "\n\n")
    code, out, err = run(capsys, "device", "import", "--config", conf, str(good), "--json")
    assert code == 0, err
    assert json.loads(out) == {"added": 2}
    code, out, _ = run(capsys, "device", "list", "--config", conf, "--json")
    listed = {d["id"]: d for d in json.loads(out)}
    assert set(listed) == {m.device_id.hex() for m in meters[:2]}
    first = listed[meters[0].device_id.hex()]
    assert first["label"] == "house 0" and first["model"] == "SDM120CT"
    assert first["owner"] == OWNER and first["ct_rating_a"] == 100  # the model's default
    # A wrong line anywhere: nothing of the file is added, the error names the line.
    bad = tmp_path / "bad.csv"
    bad.write_text("id,pubkey,model,owner,label,ct_rating_a\n"
                   f"{meters[2].device_id.hex()},{meters[2].pubkey.hex()},SDM630CT,{OWNER},"
                   "school,200\n"
                   f"{meters[0].device_id.hex()},{meters[0].pubkey.hex()},SDM120CT,{OWNER},"
                   "again,\n")
    code, _, err = run(capsys, "device", "import", "--config", conf, str(bad))
    assert code == 1 and "bad.csv line 3" in err and "already registered" in err
    code, out, _ = run(capsys, "device", "list", "--config", conf, "--json")
    assert len(json.loads(out)) == 2
    # Wrong columns are named before anything is read.
    cols = tmp_path / "cols.csv"
    cols.write_text("id,key,model\n")
    code, _, err = run(capsys, "device", "import", "--config", conf, str(cols))
    assert code == 1 and "line 1" in err and "pubkey" in err


def test_commands_on_a_missing_config_name_the_file(tmp_path, capsys):
    code, _, err = run(capsys, "device", "list", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "none.toml" in err and "gateway init" in err


def test_status_offline_and_while_running(gateway_dir, capsys):
    conf = gateway_dir / "gateway.toml"
    m = MeterKey()
    run(capsys, "device", "add", "--config", str(conf), "--id", m.device_id.hex(), "--pubkey",
        m.pubkey.hex(), "--model", "SDM120CT", "--owner", OWNER, "--label", "Shed")
    code, out, _ = run(capsys, "gateway", "status", "--config", str(conf))
    assert code == 0
    assert "not reachable" in out and "chain:     not configured" in out
    assert "Shed" in out and "never" in out
    cfg = config.load(conf)

    async def scenario():
        async with running_gateway(cfg) as gw, coap_client() as ctx:
            batch = exchange.encode_batch([m.reading(s) for s in range(1, 9)])
            code, _, _ = await coap_request(ctx, gw.coap_port, "r", batch)
            assert code == "2.04"
            code, _, _ = await coap_request(ctx, gw.coap_port, "r", b"\x80")
            assert code == "4.00"
            await asyncio.sleep(1.5)  # reject counters reach the database once a second
            return await asyncio.to_thread(main, ["gateway", "status", "--config", str(conf),
                                                  "--json"])

    assert asyncio.run(scenario()) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["service_running"] is True
    assert status["readings_total"] == 8 and status["readings_last_minute"] == 8
    assert status["rejects"] == {"empty": 1}
    device = status["devices"][0]
    assert device["label"] == "Shed" and device["last_seq"] == 8
    assert abs(device["last_seen_ms"] / 1000 - time.time()) < 60
    assert status["chain"]["contract"] is None and status["storage_bytes"] > 0
    assert status["chain"]["summary"].startswith("not configured")
    assert device["stale"] is False and device["meter_index"] is None


def test_device_readings_lists_what_was_stored_in_ingest_order(gateway_dir, capsys):
    conf = gateway_dir / "gateway.toml"
    m = MeterKey()
    run(capsys, "device", "add", "--config", str(conf), "--id", m.device_id.hex(), "--pubkey",
        m.pubkey.hex(), "--model", "SDM120CT", "--owner", OWNER, "--label", "Shed")
    code, out, _ = run(capsys, "device", "readings", "--config", str(conf), m.device_id.hex())
    assert code == 0 and "no readings stored" in out
    cfg = config.load(conf)
    t0 = int(time.time()) - 100

    async def scenario():
        async with running_gateway(cfg, http=False) as gw, coap_client() as ctx:
            for seqs in ([5, 6, 7], [2, 3], [9]):  # arrival order is not seq order
                batch = m.batch(seqs, t=t0)
                assert (await coap_request(ctx, gw.coap_port, "r", batch))[0] == "2.04"
            fault = exchange.encode_batch([m.reading(10, t=t0 + 1, st=0x0002)])
            assert (await coap_request(ctx, gw.coap_port, "r", fault))[0] == "2.04"

    asyncio.run(scenario())
    code, out, _ = run(capsys, "device", "readings", "--config", str(conf), m.device_id.hex(),
                       "--json", "--limit", "0")
    rows = json.loads(out)
    assert [r["seq"] for r in rows] == [5, 6, 7, 2, 3, 9, 10]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert rows[0]["t"] == t0 and rows[0]["ei"] == 1005 and rows[0]["flags"] == []
    assert rows[-1]["flags"] == ["METER_NO_REPLY"] and rows[-1]["ei"] is None
    code, out, _ = run(capsys, "device", "readings", "--config", str(conf), m.device_id.hex(),
                       "--json", "--limit", "2")
    assert [r["seq"] for r in json.loads(out)] == [9, 10]
    code, out, _ = run(capsys, "device", "readings", "--config", str(conf), m.device_id.hex(),
                       "--json", "--after-seq", "6")
    assert [r["seq"] for r in json.loads(out)] == [7, 9, 10]
    code, out, _ = run(capsys, "device", "readings", "--config", str(conf), m.device_id.hex())
    assert code == 0 and "METER_NO_REPLY" in out and "1.005" in out  # kWh for a person
    code, _, err = run(capsys, "device", "readings", "--config", str(conf), "00" * 8)
    assert code == 1 and "no device 0000000000000000" in err


def test_run_serves_until_sigterm(gateway_dir, tmp_path):
    conf = gateway_dir / "gateway.toml"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(conf)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = json.loads(proc.stderr.readline())
        assert line["msg"] == "gateway ready"
        assert line["ingest_processes"] == config.load(conf).ingest.process_count()
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0
    assert "gateway stopped" in proc.stderr.read()

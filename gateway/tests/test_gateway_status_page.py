"""The status page in a real headless browser (Debian Chromium via playwright-core)."""

import asyncio
import json
import os
import sqlite3
from pathlib import Path

import pytest
from gw_testbed import MeterKey, coap_client, coap_request, register, running_gateway, write_config
from wattcore import exchange, reading

from gateway import registry, store

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCRIPT = Path(__file__).with_name("status_page.mjs")


def test_status_page_shows_devices_faults_and_rejects(tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    shed, roof, old = MeterKey(), MeterKey(model="SDM630CT"), MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, shed, roof, old)
    conn = store.open_store(cfg.db_path)
    conn.execute("UPDATE devices SET label = 'Shed <b>&' WHERE id = ?", (shed.device_id,))
    conn.execute("UPDATE devices SET label = 'Bakery roof' WHERE id = ?", (roof.device_id,))
    registry.revoke_device(conn, old.device_id)
    conn.close()
    screenshot = Path(os.environ.get("STATUS_SCREENSHOT", tmp_path / "status.png"))

    async def scenario():
        async with running_gateway(cfg) as gw, coap_client() as ctx:
            port = gw.coap_port
            batch = [shed.reading(1, p=-2300, ei=12345, ee=67890),
                     shed.reading(2, st=reading.ST_METER_NO_REPLY)]
            assert (await coap_request(ctx, port, "r", exchange.encode_batch(batch)))[0] == "2.04"
            roof_batch = exchange.encode_batch([roof.reading(s) for s in range(1, 6)])
            assert (await coap_request(ctx, port, "r", roof_batch))[0] == "2.04"
            forged = bytearray(roof.reading(6))
            forged[-1] ^= 1
            for _ in range(3):
                assert (await coap_request(ctx, port, "r",
                                           exchange.encode_batch([bytes(forged)])))[0] == "4.01"
            assert (await coap_request(ctx, port, "r",
                                       exchange.encode_batch([old.reading(1)])))[0] == "4.03"
            await asyncio.sleep(1.5)  # reject counters reach the database once a second
            proc = await asyncio.create_subprocess_exec(
                "node", str(SCRIPT), f"http://127.0.0.1:{gw.http_port}", str(screenshot),
                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            return json.loads(out)

    page = asyncio.run(scenario())
    assert page["status"] == 200 and page["title"] == "Wattshare gateway"
    summary = dict((row[0], row[1]) for row in page["summary"])
    assert summary["Readings stored"] == "7"
    assert summary["Chain"] == "not configured (wattshare chain deploy)"
    header = page["deviceHeader"]
    devices = {d["id"]: dict(zip(header, d["cells"], strict=True)) | {"revoked": d["revoked"]}
               for d in page["devices"]}
    s = devices[shed.device_id.hex()]
    assert s["Label"] == "Shed <b>&"  # escaped, shown as text
    assert s["Readings"] == "2" and s["Last seq"] == "2"
    assert "1 (last: METER_NO_REPLY" in s["Faults"]
    r = devices[roof.device_id.hex()]
    assert r["Model"] == "SDM630CT" and r["Readings"] == "5" and r["Faults"] == "0"
    assert r["Rejects"] == "bad-signature: 3" and "ago" in r["Last seen"]
    o = devices[old.device_id.hex()]
    assert o["revoked"] and o["Status"] == "revoked" and o["Rejects"] == "revoked: 1"
    assert o["Last seen"] == "never"
    assert ["bad-signature", "3"] in page["rejects"] and ["revoked", "1"] in page["rejects"]
    assert "wattshare_readings_accepted_total 7" in page["metrics"]
    assert 'wattshare_readings_rejected_total{reason="bad-signature"} 3' in page["metrics"]
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    db = sqlite3.connect(cfg.db_path)
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 7
    db.close()

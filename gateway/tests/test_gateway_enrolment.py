"""Enrolment (POST /e) and commissioning records (POST /c): every outcome of the checks on a
database, then through a running gateway over CoAP with both front ends: the device is
registered from its invite and its readings are accepted at once; refusals leave the
registry as it was, are counted in /metrics and logged without the code."""

import asyncio
import io
import json
import logging
import time
import urllib.request

import pytest
from gw_testbed import (
    FRONT_ENDS,
    OWNER,
    MeterKey,
    coap_client,
    coap_request,
    running_gateway,
    stored,
    write_config,
)
from wattcore import cose, exchange
from wattcore import enrolment as core

from gateway import commissioning, enrolment, logs, registry, status, store
from gateway.errors import DeviceExists

NOW = 1785318000
RECORD = {"installer": "A. Fitter", "model": "sdm120ct", "serial": 2190471, "time": NOW,
          "checks": {"modbus": {"ok": True, "polls": 10, "crc_errors": 0},
                     "ct_orientation": {"ok": True, "power_w": 1520}}}


def request(meter, code, t=NOW, mdl=1):
    return core.sign_request(core.code_key(code), meter.device_id, meter.pubkey, t, mdl,
                             meter.sign)


def record(meter, body=None, t=NOW):
    return core.sign_record(meter.device_id, meter.pubkey, t, json.dumps(body or RECORD),
                            meter.sign)


@pytest.fixture
def conn(tmp_path):
    c = store.open_store(tmp_path / "gw.sqlite3")
    yield c
    c.close()


def invite(conn, label="Bakery roof", ttl=1800, model=None, ct=None, now=NOW):
    return enrolment.create_invite(conn, label, OWNER, ttl, model, ct, now=now)


def devices(conn):
    return [(d.id, d.pubkey, d.label) for d in registry.list_devices(conn)]


def test_a_device_enrols_with_its_invite(conn):
    code, inv = invite(conn, ct=63, model="SDM120CT")
    meter = MeterKey()
    out = enrolment.enrol(conn, request(meter, code), NOW + 5)
    assert (out.reason, out.code) == (None, exchange.CHANGED) and not out.repeat
    assert out.confirm == core.confirmation(core.code_key(code), meter.device_id, meter.pubkey)
    d = registry.get_device(conn, meter.device_id)
    assert (d.pubkey, d.label, d.owner, d.model, d.ct_rating_a, d.status) == (
        meter.pubkey, "Bakery roof", OWNER, "SDM120CT", 63.0, "active")
    used = enrolment.get_invite(conn, inv.id)
    assert (used.used_at, used.device, used.pubkey) == (NOW + 5, meter.device_id, meter.pubkey)
    assert enrolment.enrolled_by(conn, meter.device_id) == used
    # the same request again (a lost answer): enrolled, nothing changes
    again = enrolment.enrol(conn, request(meter, code, t=NOW + 60), NOW + 60)
    assert again.reason is None and again.repeat and again.confirm == out.confirm
    assert len(devices(conn)) == 1


def test_model_and_ct_default_to_what_the_device_reports(conn):
    code, _ = invite(conn)
    meter = MeterKey()
    assert enrolment.enrol(conn, request(meter, code, mdl=2), NOW).reason is None
    d = registry.get_device(conn, meter.device_id)
    assert (d.model, d.ct_rating_a) == ("SDM630CT", 100.0)


@pytest.mark.parametrize("case", ["wrong", "used", "used-other-key", "expired", "exists",
                                  "key-exists", "model", "bad-signature", "cose", "schema",
                                  "kid", "not-a-point"])
def test_refusals_leave_the_registry_unchanged(conn, case):
    code, inv = invite(conn, model="SDM120CT")
    meter, other = MeterKey(), MeterKey()
    now = NOW + 10
    if case == "used":
        assert enrolment.enrol(conn, request(other, code), now).reason is None
    if case == "used-other-key":  # same device id, another key: not the device that enrolled
        assert enrolment.enrol(conn, request(other, code), now).reason is None
        meter = MeterKey(device_id=other.device_id)
    if case == "exists":
        registry.add_device(conn, meter.device_id, meter.pubkey, "SDM120CT", OWNER, "by hand")
    if case == "key-exists":
        registry.add_device(conn, other.device_id, meter.pubkey, "SDM120CT", OWNER, "by hand")
    before = devices(conn)
    payload = request(meter, code)
    if case == "wrong":
        payload = request(meter, core.code_from_random(lambda n: b"\x05" * n))
    if case == "expired":
        now = NOW + 1800
    if case == "model":
        payload = request(meter, code, mdl=3)
    if case == "bad-signature":
        payload = payload[:-1] + bytes([payload[-1] ^ 1])
    if case == "cose":
        payload = b"\xa0"
    if case == "schema":
        r = core.decode_request(cose.decode_sign1(payload).payload)
        payload = cose.sign1(core.encode_request(dict(r, t=0))[:-1] + b"\x40", meter.device_id,
                             meter.sign, core.AAD_ENROL)
    if case == "kid":
        r = core.decode_request(cose.decode_sign1(payload).payload)
        payload = cose.sign1(core.encode_request(r), other.device_id, meter.sign, core.AAD_ENROL)
    if case == "not-a-point":
        r = core.decode_request(cose.decode_sign1(payload).payload)
        bad = dict(r, pub=b"\x04" + b"\x01" * 64)
        payload = cose.sign1(core.encode_request(bad), meter.device_id, meter.sign,
                             core.AAD_ENROL)
    out = enrolment.enrol(conn, payload, now)
    expect = {"wrong": ("code-wrong", "4.03"), "used": ("code-used", "4.03"),
              "used-other-key": ("code-used", "4.03"), "expired": ("code-expired", "4.03"),
              "exists": ("device-exists", "4.09"), "key-exists": ("device-exists", "4.09"),
              "model": ("model-mismatch", "4.22"), "bad-signature": ("bad-signature", "4.01"),
              "cose": ("cose", "4.00"), "schema": ("schema", "4.00"),
              "kid": ("kid-mismatch", "4.00"), "not-a-point": ("schema", "4.00")}[case]
    assert (out.reason, f"{out.code >> 5}.{out.code & 31:02d}") == expect, out.detail
    assert devices(conn) == before
    if case in ("exists", "key-exists"):  # the gateway knows the code: it says so
        assert out.confirm == core.confirmation(core.code_key(code), meter.device_id,
                                                meter.pubkey)
    else:
        assert out.confirm is None
    if case not in ("used", "used-other-key"):
        assert enrolment.get_invite(conn, inv.id).used_at is None


def test_refusals_need_no_write_lock(tmp_path):
    # a flood of bad requests must not take the lock the readings' writers need: with
    # another connection holding it, refusals are still answered (a write would wait for
    # the lock and then fail with "database is locked")
    path = tmp_path / "gw.sqlite3"
    conn = store.open_store(path)
    conn.execute("PRAGMA busy_timeout = 100")
    code, _ = invite(conn)
    used_code, _ = invite(conn, label="used")
    first = MeterKey()
    assert enrolment.enrol(conn, request(first, used_code), NOW).reason is None
    holder = store.connect(path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        meter = MeterKey()
        wrong = core.code_from_random(lambda n: b"\x09" * n)
        assert enrolment.enrol(conn, request(meter, wrong), NOW).reason == "code-wrong"
        assert enrolment.enrol(conn, request(meter, used_code), NOW).reason == "code-used"
        assert enrolment.enrol(conn, request(meter, code), NOW + 1800).reason == "code-expired"
        assert enrolment.enrol(conn, request(first, used_code), NOW).repeat
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        conn.close()


def test_the_database_keeps_no_code(tmp_path):
    path = tmp_path / "gw.sqlite3"
    conn = store.open_store(path)
    codes = [invite(conn, label=f"m{i}")[0] for i in range(5)]
    meter = MeterKey()
    assert enrolment.enrol(conn, request(meter, codes[0]), NOW).reason is None
    conn.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for code in codes:
        for form in (code, core.format_code(code), code.lower()):
            assert form.encode() not in raw


def test_parse_ttl():
    assert enrolment.parse_ttl("30m") == 1800 == enrolment.parse_ttl("30")
    assert enrolment.parse_ttl("2h") == 7200 and enrolment.parse_ttl("1d") == 86400
    assert enrolment.parse_ttl("90s") == 90
    for bad in ("0m", "59s", "8d", "soon", "-5m", "1.5h"):
        with pytest.raises(registry.InvalidDevice):
            enrolment.parse_ttl(bad)


def test_device_add_refuses_a_key_registered_under_another_id(conn):
    m = MeterKey()
    registry.add_device(conn, m.device_id, m.pubkey, "SDM120CT", OWNER, "first")
    with pytest.raises(DeviceExists, match=f"already registered as device {m.device_id.hex()}"):
        registry.add_device(conn, b"WS\x00\x00\x00\x00\x00\x09", m.pubkey, "SDM120CT", OWNER,
                            "second")
    assert len(devices(conn)) == 1


def test_records_are_stored_checked_and_shown(conn):
    meter, stranger = MeterKey(), MeterKey()
    registry.add_device(conn, meter.device_id, meter.pubkey, "SDM120CT", OWNER, "x")
    assert commissioning.store_record(conn, record(meter), NOW * 1000).reason is None
    d = registry.get_device(conn, meter.device_id)
    shown = commissioning.latest(conn, d)
    assert shown["record"] == RECORD and shown["signature_valid"] and shown["device_time"] == NOW
    newer = dict(RECORD, installer="B. Fitter")
    assert commissioning.store_record(conn, record(meter, newer), NOW * 1000 + 1).reason is None
    assert commissioning.latest(conn, d)["record"]["installer"] == "B. Fitter"
    report = status.device_report(conn, meter.device_id, NOW * 1000)
    assert report["registered"] and not report["enrolled"]
    assert report["commissioning"]["record"] == newer and report["last_reading"] is None
    signed = record(meter)
    refusals = {
        "unknown-device": record(stranger),
        "bad-signature": signed[:-1] + bytes([signed[-1] ^ 1]),
        "schema": record(meter, {"installer": "x", "checks": {"modbus": {"ok": "yes"}}}),
        "cose": b"\x00",
    }
    # a record that names another key, signed by that key, is not the device's
    forged = core.sign_record(meter.device_id, stranger.pubkey, NOW, json.dumps(RECORD),
                              stranger.sign)
    refusals["bad-signature "] = forged
    for reason, payload in refusals.items():
        out = commissioning.store_record(conn, payload, NOW * 1000)
        assert out.reason == reason.strip(), (reason, out.detail)
    registry.revoke_device(conn, meter.device_id)
    assert commissioning.store_record(conn, record(meter), 1).reason == "revoked"
    assert conn.execute("SELECT count(*) FROM commissioning").fetchone()[0] == 2


def test_record_text_schema():
    good = commissioning.check_record_text(json.dumps(RECORD))
    assert good == RECORD
    for text, key in (("[]", "object"), ("{", "not JSON"), ('{"checks": {"a": {"ok": true}}}',
                      "installer"), ('{"installer": "x"}', "checks"),
                      ('{"installer": "x", "checks": {"a": 1}}', "checks.a"),
                      ('{"installer": "x", "checks": {}}', "checks")):
        with pytest.raises(commissioning.RecordError, match=key):
            commissioning.check_record_text(text)


# -- through a running gateway ----------------------------------------------------------


def _metric(text, name, label):
    for line in text.splitlines():
        if line.startswith(f'{name}{{outcome="{label}"}}'):
            return int(line.split()[-1])
    return 0


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_enrolment_over_coap_then_readings_and_a_record(tmp_path, front_end):
    cfg = write_config(tmp_path, coap={"front_end": front_end})
    conn = store.open_store(cfg.db_path)
    code, _ = invite(conn, now=int(time.time()))
    conn.close()
    meter = MeterKey()
    stream = io.StringIO()
    logs.setup("info", "json", stream)

    async def scenario():
        async with running_gateway(cfg) as gw, coap_client() as ctx:
            port = gw.coap_port
            now = int(time.time())
            wrong = request(meter, core.code_from_random(lambda n: b"\x07" * n), t=now)
            got, body, _ = await coap_request(ctx, port, "e", wrong)
            assert (got, body["reason"]) == ("4.03", "code-wrong")
            got, body, _ = await coap_request(ctx, port, "r", meter.batch([1]))
            assert (got, body["reason"]) == ("4.03", "unknown-device")
            got, body, _ = await coap_request(ctx, port, "e", request(meter, code, t=now))
            assert got == "2.04" and body["confirm"] == core.confirmation(
                core.code_key(code), meter.device_id, meter.pubkey)
            # accepted at once: the ingest process took the new device without waiting
            got, body, _ = await coap_request(ctx, port, "r", meter.batch([1, 2]))
            assert (got, body.get("ack")) == ("2.04", 2)
            got, _, _ = await coap_request(ctx, port, "c", record(meter))
            assert got == "2.04"
            got, body, _ = await coap_request(ctx, port, "c", b"\x00")
            assert (got, body["reason"]) == ("4.00", "cose")
            got, body, _ = await coap_request(ctx, port, "e", request(meter, code), code=1)
            assert (got, body["reason"]) == ("4.05", "method")
            got, body, _ = await coap_request(ctx, port, "e", b"\xa0", content_format=0)
            assert (got, body["reason"]) == ("4.15", "content-format")
            other = MeterKey()
            got, body, _ = await coap_request(ctx, port, "e", request(other, code, t=now))
            assert (got, body["reason"]) == ("4.03", "code-used")
            url = f"http://127.0.0.1:{gw.http_port}"
            metrics = await asyncio.to_thread(_get, url + "/metrics")
            api = json.loads(await asyncio.to_thread(_get, url + f"/api/devices/"
                                                     f"{meter.device_id.hex()}"))
            unknown = json.loads(await asyncio.to_thread(_get, url + "/api/devices/"
                                                         + "57" * 8))
            return metrics, api, unknown

    try:
        metrics, api, unknown = asyncio.run(scenario())
    finally:
        logging.getLogger().handlers.clear()
    name = "wattshare_enrolment_requests_total"
    assert [_metric(metrics, name, o) for o in ("enrolled", "code-wrong", "code-used",
                                                "method", "content-format")] == [1, 1, 1, 1, 1]
    assert _metric(metrics, "wattshare_commissioning_records_total", "stored") == 1
    assert _metric(metrics, "wattshare_commissioning_records_total", "cose") == 1
    assert len(stored(cfg)) == 2
    assert api["registered"] and api["enrolled"] and api["label"] == "Bakery roof"
    assert api["last_reading"]["seq"] == 2 and api["last_reading"]["signature_valid"]
    assert api["commissioning"]["record"] == RECORD
    assert unknown == {"id": "57" * 8, "registered": False, "enrolled": False,
                       "last_reading": None, "commissioning": None}
    text = stream.getvalue()
    assert "device enrolled" in text and "enrolment refused" in text
    key = core.code_key(code)
    for secret in (code, core.format_code(code), code.lower(), key.hex()):
        assert secret not in text


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()



# -- the CLI ------------------------------------------------------------------------------


def _cli(capsys, *argv):
    from tools.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_invite_prints_the_code_once_and_stores_its_hash(tmp_path, capsys):
    cfg = write_config(tmp_path)
    store.open_store(cfg.db_path).close()
    c = str(cfg.path)
    code, out, err = _cli(capsys, "device", "invite", "--config", c, "--label", "Shed",
                          "--owner", OWNER, "--expires", "2h", "--meter", "sdm630ct",
                          "--ct-rating", "80", "--json")
    assert code == 0 and not err
    data = json.loads(out)
    assert core.parse_code(data["code"])  # a valid code, shown as XXXX-XXXX-XXXX
    assert (data["label"], data["owner"], data["model"], data["ct_rating_a"]) == (
        "Shed", registry.parse_owner(OWNER), "SDM630CT", 80.0)
    assert 7190 <= data["expires_at"] - time.time() <= 7200
    code, out, err = _cli(capsys, "device", "invite", "--config", c, "--label", "Roof",
                          "--owner", OWNER)
    assert code == 0 and out.startswith("code:    ") and "works once" in out
    text_code = out.split()[1]
    conn = store.connect(cfg.db_path)
    keys = {bytes(k) for (k,) in conn.execute("SELECT code_key FROM invites")}
    conn.close()
    assert keys == {core.code_key(core.parse_code(data["code"])),
                    core.code_key(core.parse_code(text_code))}
    for argv, message in (
        (("--expires", "10d"), "between 1 minute and 7 days"),
        (("--meter", "sdm999"), "model 'sdm999'"),
        (("--ct-rating", "0"), "must be above 0"),
    ):
        code, out, err = _cli(capsys, "device", "invite", "--config", c, "--label", "x",
                              "--owner", OWNER, *argv)
        assert code == 1 and message in err and "Traceback" not in err and not out


def test_the_invite_command_of_the_gateway_guide_runs_as_written(tmp_path, capsys):
    import shlex
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    line = next(x for x in guide.splitlines() if x.startswith("wattshare device invite "))
    cfg = write_config(tmp_path)
    store.open_store(cfg.db_path).close()
    code, out, err = _cli(capsys, *shlex.split(line)[1:], "--config", str(cfg.path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("code:    ") and core.parse_code(lines[0].split()[1])
    assert lines[1] == ("for:     Bakery roof (owner 0x52908400098527886E0F7030069857D2E4169EE7"
                        ", SDM120CT, CT 63 A)")
    assert lines[2].endswith("(30m); works once")


def test_every_refusal_of_post_e_is_in_the_protocol_document():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = text[text.index("## 6. Enrolment"):]
    for reason, code in enrolment.REASONS.items():
        assert f"`{reason}`" in section, reason
        assert f"{code >> 5}.{code & 31:02d}" in section, reason


def test_device_add_refuses_a_known_key_and_show_has_the_record(tmp_path, capsys):
    cfg = write_config(tmp_path)
    conn = store.open_store(cfg.db_path)
    code, _ = invite(conn, now=int(time.time()))
    meter = MeterKey()
    assert enrolment.enrol(conn, request(meter, code), int(time.time())).reason is None
    assert commissioning.store_record(conn, record(meter), NOW * 1000).reason is None
    conn.close()
    c = str(cfg.path)
    rc, out, err = _cli(capsys, "device", "add", "--config", c, "--id", "57" * 8, "--pubkey",
                        meter.pubkey.hex(), "--model", "SDM120CT", "--owner", OWNER,
                        "--label", "twin")
    assert rc == 1 and f"already registered as device {meter.device_id.hex()}" in err
    rc, out, err = _cli(capsys, "device", "show", "--config", c, meter.device_id.hex())
    assert rc == 0
    assert "enrolled:    yes, with invite" in out
    assert "commissioning: " in out and "by A. Fitter, signed by the device" in out
    assert "ok     modbus: polls 10, crc_errors 0" in out
    rc, out, err = _cli(capsys, "device", "show", "--config", c, meter.device_id.hex(),
                        "--json")
    shown = json.loads(out)
    assert shown["enrolled"] and shown["commissioning"]["record"] == RECORD
    assert shown["label"] == "Bakery roof" and "state" in shown


def test_invites_are_listed_and_an_open_one_can_be_cancelled(tmp_path, capsys):
    cfg = write_config(tmp_path)
    store.open_store(cfg.db_path).close()
    c = str(cfg.path)
    codes = {}
    for label in ("Bakery roof", "School", "Shed"):
        code, out, err = _cli(capsys, "device", "invite", "--config", c, "--label", label,
                              "--owner", OWNER, "--expires", "2h", "--json")
        assert code == 0, err
        data = json.loads(out)
        codes[label] = (data["invite"], core.parse_code(data["code"]))
    conn = store.connect(cfg.db_path)
    meter = MeterKey()
    now = int(time.time())
    assert enrolment.enrol(conn, request(meter, codes["Bakery roof"][1], t=now), now).reason \
        is None

    code, out, err = _cli(capsys, "device", "invites", "--config", c, "--json")
    assert code == 0, err
    assert [i["label"] for i in json.loads(out)] == ["Shed", "School"]  # open, newest first
    code, out, err = _cli(capsys, "device", "invites", "--config", c, "--all", "--json")
    shown = {i["label"]: i for i in json.loads(out)}
    assert shown["Bakery roof"]["state"] == "used"
    assert shown["Bakery roof"]["device"] == meter.device_id.hex()
    assert all("code" not in i for i in shown.values())  # never shown again
    code, out, err = _cli(capsys, "device", "invites", "--config", c, "--all")
    assert "used" in out and "Bakery roof" in out and "open" in out and "School" in out

    school_id, school_code = codes["School"]
    code, out, err = _cli(capsys, "device", "cancel-invite", str(school_id), "--config", c)
    assert code == 0 and f"invite {school_id} (School) cancelled" in out, err
    # the school's meter tries the code: refused as expired, nothing registered
    other = MeterKey()
    later = int(time.time())
    refused = enrolment.enrol(conn, request(other, school_code, t=later), later)
    assert refused.reason == core.CODE_EXPIRED
    assert registry.get_device(conn, other.device_id, missing_ok=True) is None
    conn.close()
    code, out, err = _cli(capsys, "device", "invites", "--config", c, "--json")
    assert [i["label"] for i in json.loads(out)] == ["Shed"]

    for invite_id, message in ((school_id, "has expired already"),
                               (codes["Bakery roof"][0], "revoke the device instead"),
                               (999, "no invite 999")):
        code, out, err = _cli(capsys, "device", "cancel-invite", str(invite_id), "--config", c)
        assert code == 1 and message in err and "Traceback" not in err and not out

"""`wattshare meter provision`'s verdicts on a commissioning report (pure: the same report
gives the same message) and its refusals of bad options before anything is touched. The
whole command against a virtual board and a gateway is in test_installer.py."""

import pytest

from tools import cli
from tools.errors import InstallError
from tools.gateway_client import Gateway, parse_host_port
from tools.meter_provision import Settings, device_config, judge_meter

GOOD: dict = {"polls": 10, "ok": 10, "retries": 0, "crc_errors": 0, "no_reply": 0, "exceptions": 0,
        "wrong_address": 0, "power_w": 640, "ei_wh": 1234567, "ee_wh": 89000, "serial": None,
        "model": "sdm120ct", "slave": 1, "flags": [], "clock_trusted": False}


def settings(**kw) -> Settings:
    base = dict(port="/dev/ttyUSB0", gateway=Gateway("gw", 5683, "http://gw:8683"),
                code="YSAF-XV2M-F2H1", meter_id="sdm120ct")
    return Settings(**{**base, **kw})


def verdict(report_changes=None, **kw):
    return judge_meter({**GOOD, **(report_changes or {})}, settings(**kw))


def test_a_good_meter_passes_every_check():
    checks, problem = verdict()
    assert problem is None
    assert checks["modbus_link"] == {"ok": True, "polls": 10, "answered": 10, "retries": 0,
                                     "crc_errors": 0, "no_reply": 0, "exceptions": 0,
                                     "wrong_address": 0, "slave": 1}
    assert checks["live_reading"]["import_kwh"] == 1234.567
    assert checks["ct_orientation"] == {"site": "consumer", "power_w": 640, "ok": True,
                                        "checked": True}


@pytest.mark.parametrize("changes, kw, message", [
    ({"power_w": -640}, {}, "the CT is reversed: the meter sees 640 W flowing to the grid at a "
                            "consumer-only site: open the clamp and turn it round so its arrow "
                            "points towards the load"),
    ({"ok": 0, "power_w": None, "flags": ["CT_REVERSED"]}, {}, "the CT is reversed"),
    ({"power_w": -640}, {"site": "producer", "pv_off": True},
     "the CT is reversed: the meter sees 640 W flowing to the grid at a site with its PV off"),
    ({"power_w": 12}, {}, "the meter measures 12 W, too little to tell which way the CT clamp "
                          "faces: switch on a known load (a kettle)"),
    ({"ok": 0, "no_reply": 30, "power_w": None, "scan": [7]}, {},
     "wrong Modbus address: no meter answers at address 1, but one answers at address 7: "
     "run the command again with --slave 7"),
    ({"ok": 0, "no_reply": 30, "power_w": None, "scan": []}, {},
     "no reply from the meter (nothing answered at address 1, nor anywhere on the bus)"),
    ({"ok": 0, "crc_errors": 30, "power_w": None}, {}, "the meter's replies are garbled (30 CRC "
                                                       "errors in 10 polls)"),
    ({"ok": 0, "exceptions": 30, "power_w": None}, {},
     "the meter at address 1 refuses the requests (Modbus exceptions): check that it is a "
     "sdm120ct (--meter)"),
    ({"ok": 8, "retries": 6, "no_reply": 6}, {}, "poor Modbus link: 8 of 10 polls answered "
                                                 "(6 retries, 0 CRC errors, 6 without reply)"),
])
def test_each_failure_names_its_fix(changes, kw, message):
    checks, problem = verdict(changes, **kw)
    assert problem is not None and problem.startswith(message), problem
    assert not all(c["ok"] for c in checks.values())


def test_what_the_readings_cannot_tell_is_recorded_as_not_checked():
    # a producer may export: the sign says nothing without the PV isolated
    checks, problem = verdict({"power_w": -640}, site="producer")
    assert problem is None and checks["ct_orientation"]["checked"] is False
    assert "--pv-off" in checks["ct_orientation"]["note"]
    # the PZEM-004T measures power without a sign
    pzem = {**GOOD, "model": "pzem004t-v3", "ee_wh": None}
    checks, problem = judge_meter(pzem, settings(meter_id="pzem004t-v3"))
    assert problem is None and checks["ct_orientation"]["checked"] is False


def test_the_code_goes_into_device_json_only_after_the_checks():
    s = settings(wifi_ssid="Street", wifi_password="pw", site="consumer", ct_rating=63)
    meter = {"slave": 1, "ct_rating_A": 100}
    checking = device_config(s, meter, None)
    assert "enrol_code" not in checking and checking["exports_allowed"] is True
    final = device_config(s, meter, s.code)
    assert final["enrol_code"] == "YSAF-XV2M-F2H1" and final["exports_allowed"] is False
    assert (final["ct_rating_A"], final["wifi_ssid"], final["gateway_port"]) == (63, "Street",
                                                                                 5683)


def test_gateway_addresses():
    assert parse_host_port("192.168.1.20", 5683) == ("192.168.1.20", 5683)
    assert parse_host_port("gw.local:5684", 5683) == ("gw.local", 5684)
    assert parse_host_port("[fd00::1]:5684", 5683) == ("fd00::1", 5684)
    with pytest.raises(InstallError, match="not a number"):
        parse_host_port("gw:x", 5683)


@pytest.mark.parametrize("args, message", [
    (["--code", "YSAF-XV2M-F2H2"], "--code: the code does not check out: a character is "
                                   "mistyped: check it character by character"),
    (["--code", "YSAF-XV2M"], "--code: a code has 12 characters"),
    (["--ct-rating", "0"], "--ct-rating 0: must be 1..10000 A"),
    (["--slave", "300"], "--slave 300: a Modbus address is 1..247"),
    (["--gateway", "gw:99999"], "--gateway 'gw:99999': port 99999 is not in 1..65535"),
])
def test_bad_options_are_refused_before_anything_is_touched(args, message, capsys):
    argv = ["meter", "provision", "--port", "/dev/ttyUSB0", "--gateway", "192.168.1.20",
            "--code", "YSAF-XV2M-F2H1", "--meter", "sdm120ct"]
    for i in range(0, len(args), 2):
        if args[i] in argv:
            argv[argv.index(args[i]) + 1] = args[i + 1]
        else:
            argv += args[i:i + 2]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("wattshare: error: " + message), err
    assert "YSAF" not in err  # the code is not repeated

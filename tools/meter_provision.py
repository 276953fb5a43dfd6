"""``wattshare meter provision``: configure the meter, enrol it at the gateway with the
technician's one-time code, check it and have the device sign the commissioning record.

Run on a board where ``wattshare meter deploy`` put the firmware. In one command:

1. the gateway must answer on its CoAP port and its HTTP API (else nothing changes);
2. the device tells its id and public key (``main.identity()``; the key was made on the
   device and never leaves it); ``config/meter.json`` and ``config/device.json`` are
   written (gateway, Wi-Fi, Modbus address, CT rating, site type; no code yet);
3. the meter is checked through the board (``main.commission()``): does it answer at
   its Modbus address (else the bus is scanned and the address found suggested), link
   quality over ``--polls`` polls, live values, CT orientation against the site type.
   A failed check stops here: ``device.json`` has no code, the gateway is untouched;
4. the code goes into ``device.json`` and the board restarts: the firmware enrols
   (``POST /e``, signed by the device key, bound to the code) and sends its readings;
   a refused code (wrong, used, expired) stops the command with what to do;
5. once the gateway has the first reading verified, the device signs the commissioning
   record (each check with its values, installer, time; ``main.sign_record()``) and it
   goes to the gateway (CoAP ``POST /c``); the board restarts into the firmware.

The code is never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field

from wattcore import enrolment as enrolment_core
from wattcore import exchange
from wattcore.errors import CodeError

from tools.board_config import MAX_CT_RATING_A, compile_meter, get_meter
from tools.board_link import BoardLink
from tools.errors import BoardError, InstallError
from tools.gateway_client import Gateway, parse_host_port

SITES = ("consumer", "producer")
SIGN_NOISE_W = 50  # below this the power sign says nothing about the CT's direction
DEFAULT_POLLS = 10
DEFAULT_TIMEOUT_S = 120.0

_REFUSED = re.compile(r"enrolment: REFUSED (\S+) (\S+)")
_NO_ANSWER = "enrolment: no answer from the gateway"

CODE_HINTS = {
    enrolment_core.CODE_WRONG: "the gateway has no invite with this code: check the code, "
                               "or ask the technician for a new one (wattshare device invite)",
    enrolment_core.CODE_USED: "this code has already enrolled another meter: ask the "
                              "technician for a new code (wattshare device invite)",
    enrolment_core.CODE_EXPIRED: "the code has expired: ask the technician for a new code "
                                 "(wattshare device invite --expires ...)",
    enrolment_core.MODEL_MISMATCH: "the invite is for another meter model: check --meter, or "
                                   "ask for an invite for this model",
}


@dataclass
class Settings:
    port: str
    gateway: Gateway
    code: str
    meter_id: str
    ct_rating: int | None = None
    wifi_ssid: str = ""
    wifi_password: str = ""
    site: str = "consumer"
    slave: int | None = None
    polls: int = DEFAULT_POLLS
    interval_s: int = 10
    installer: str = "installer"
    timeout_s: float = DEFAULT_TIMEOUT_S
    pv_off: bool = False
    scan_timeout_ms: int = 80
    extra: dict = field(default_factory=dict)


def device_config(s: Settings, meter: dict, code: str | None) -> dict:
    """The device.json the firmware reads (app/config.py), with the code or without.

    Without the code (the checks) exports are allowed, so a poll that sees export still
    reports its values and the check can tell a reversed CT from a silent meter."""
    cfg = {"gateway_host": s.gateway.host, "gateway_port": s.gateway.coap_port,
           "interval_s": s.interval_s, "slave": s.slave or meter["slave"],
           "ct_rating_A": s.ct_rating or meter["ct_rating_A"],
           "wifi_ssid": s.wifi_ssid, "wifi_password": s.wifi_password,
           "exports_allowed": s.site == "producer" or not code}
    if code:
        cfg["enrol_code"] = code
    return cfg


# ---- the checks -------------------------------------------------------------------------


def judge_meter(report: dict, s: Settings) -> tuple[dict, str | None]:
    """The commissioning report of ``main.commission`` -> (checks for the record, the
    first failure's message or None). Pure: the same report gives the same verdict."""
    slave = report["slave"]
    polls, ok = report["polls"], report["ok"]
    link = {"ok": ok == polls, "polls": polls, "answered": ok, "retries": report["retries"],
            "crc_errors": report["crc_errors"], "no_reply": report["no_reply"],
            "exceptions": report["exceptions"], "wrong_address": report["wrong_address"],
            "slave": slave}
    checks: dict = {"modbus_link": link}
    if ok == 0 and "CT_REVERSED" in report.get("flags", []):
        checks["ct_orientation"] = {"ok": False, "checked": True, "site": s.site}
        return checks, ("the CT is reversed: the meter sees power flowing to the grid at a "
                        "consumer-only site: open the clamp and turn it round so its arrow "
                        "points towards the load (away from the grid), then run the command "
                        "again")
    if ok == 0:
        scan = report.get("scan") or []
        if scan:
            return checks, (
                f"wrong Modbus address: no meter answers at address {slave}, but one answers "
                f"at address {scan[0]}: run the command again with --slave {scan[0]} (or set "
                f"the meter's own address to {slave} in its menu)")
        if report["crc_errors"] or report["wrong_address"]:
            return checks, (
                f"the meter's replies are garbled ({report['crc_errors']} CRC errors in "
                f"{polls} polls): check the 120 ohm termination at the far end of the "
                "RS-485 bus, the A/B wires and the meter's baud rate (9600 8N1)")
        if report["exceptions"]:
            return checks, (
                f"the meter at address {slave} refuses the requests (Modbus exceptions): "
                f"check that it is a {report['model']} (--meter)")
        return checks, (
            f"no reply from the meter (nothing answered at address {slave}, nor anywhere on "
            "the bus): check the RS-485 wiring (A to A, B to B: swap A and B if unsure), the "
            "120 ohm termination, that the meter is powered, and its baud rate (9600 8N1)")
    if ok < polls:
        return checks, (
            f"poor Modbus link: {ok} of {polls} polls answered ({report['retries']} retries, "
            f"{report['crc_errors']} CRC errors, {report['no_reply']} without reply): check "
            "the termination (120 ohm at the far end), the cable (twisted pair, shield to "
            "ground at one end) and its length")
    power = report["power_w"]
    checks["live_reading"] = {"ok": power is not None, "power_w": power,
                              "import_kwh": _kwh(report["ei_wh"]),
                              "export_kwh": _kwh(report["ee_wh"]), "model": report["model"]}
    orientation = {"site": s.site, "power_w": power}
    checks["ct_orientation"] = orientation
    if "export_Wh" not in get_meter(s.meter_id).fields:
        orientation.update(ok=True, checked=False,
                           note="the meter measures power without a sign")
        return checks, None
    if s.site == "producer" and not s.pv_off:
        # a producer may export: the sign alone cannot tell a reversed clamp
        orientation.update(ok=True, checked=False,
                           note="producer site: run with --pv-off (PV isolated) to check")
        return checks, None
    if power is None or abs(power) < SIGN_NOISE_W:
        orientation.update(ok=False, checked=False)
        return checks, (
            f"the meter measures {power} W, too little to tell which way the CT clamp faces: "
            "switch on a known load (a kettle) and run the command again")
    reversed_ct = power < 0 or "CT_REVERSED" in report.get("flags", [])
    orientation.update(ok=not reversed_ct, checked=True)
    if reversed_ct:
        return checks, (
            f"the CT is reversed: the meter sees {-power} W flowing to the grid at a "
            f"{'consumer-only site' if s.site == 'consumer' else 'site with its PV off'}: "
            "open the clamp and turn it round so its arrow points towards the load "
            "(away from the grid), then run the command again")
    return checks, None


def _kwh(wh) -> float | None:
    return None if wh is None else round(wh / 1000, 3)


# ---- the command --------------------------------------------------------------------------


class Provision:
    def __init__(self, s: Settings, out=sys.stdout):
        self.s = s
        self.out = out

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self) -> dict:
        """Everything; the record sent to the gateway. InstallError on a failed step."""
        s = self.s
        meter_def = get_meter(s.meter_id)
        meter = compile_meter(meter_def, s.ct_rating)
        gw = s.gateway
        if not gw.coap_reachable() or not gw.http_reachable():
            raise InstallError(
                f"the gateway is unreachable: nothing answers on CoAP {gw.host}:"
                f"{gw.coap_port} and HTTP {gw.http_url}: check the address and port "
                "(wattshare gateway status on the gateway), that the gateway runs, that its "
                "[http] bind lets this laptop in, and that this laptop is on the gateway's "
                "network (Wi-Fi)")
        self.say(f"gateway: {gw.host}:{gw.coap_port} answers (HTTP {gw.http_url})")

        with BoardLink(s.port) as link:
            ident = self._identity(link)
            dev = ident["device_id"]
            self.say(f"device: {dev} (public key {ident['public_key'][:16]}..., made on the "
                     "device)")
            known = gw.device(dev)
            link.mkdir("/config")
            link.write_file("/config/meter.json", json.dumps(meter).encode())
            link.write_file("/config/device.json",
                            json.dumps(device_config(s, meter, None)).encode())

            checks = self._check_meter(link)
            # the code only now: a meter that fails its checks never enrols
            link.write_file("/config/device.json",
                            json.dumps(device_config(s, meter, s.code)).encode())
            self.say("enrolment: restarting the meter with the code; waiting for the gateway")
            link.hard_reset()
            first = self._wait_for_enrolment(link, dev, known)
            checks.update(self._gateway_checks(first))
            self.say(f"first reading: seq {first['seq']} at {first['time']}, "
                     f"{first['p_w']} W, signature verified at the gateway")

            final = link.call_json(f"import main; main.commission({min(3, s.polls)}, "
                                   f"scan_timeout_ms={s.scan_timeout_ms})", timeout=60)
            checks["clock"]["device_clock_trusted"] = final["clock_trusted"]
            checks["clock"]["ok"] = checks["clock"]["ok"] and final["clock_trusted"]
            record = {"installer": s.installer,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "device_id": dev, "public_key": ident["public_key"],
                      "model": s.meter_id, "serial": final.get("serial"),
                      "site": s.site, "ct_rating_A": meter["ct_rating_A"],
                      "slave": final["slave"], "gateway": f"{gw.host}:{gw.coap_port}",
                      "checks": checks}
            text = json.dumps(record, sort_keys=True)
            signed = link.call_json(f"import main; main.sign_record({text!r})")["record"]
            link.hard_reset()  # back to metering

        answer = gw.post(exchange.PATH_COMMISSION, bytes.fromhex(signed))
        if answer.code != "2.04":
            raise InstallError(f"the gateway refused the commissioning record: "
                               f"{answer.code} {answer.reason or ''}")
        failed = [name for name, c in checks.items() if not c["ok"]]
        if failed:
            raise InstallError(f"checks failed: {', '.join(failed)} (the record is stored "
                               f"at the gateway: wattshare device show {dev})")
        self.say(f"commissioned: {dev} enrolled, its readings verified at the gateway, the "
                 f"signed commissioning record stored (wattshare device show {dev})")
        return record

    def _identity(self, link: BoardLink) -> dict:
        try:
            return link.call_json("import main; main.identity()")
        except BoardError as e:
            if "ImportError" in str(e) or "no module named" in str(e):
                raise InstallError(
                    f"the firmware is not on the board: wattshare meter deploy --port "
                    f"{self.s.port} --meter {self.s.meter_id}") from None
            raise

    def _check_meter(self, link: BoardLink) -> dict:
        s = self.s
        self.say(f"meter: checking {s.meter_id} at Modbus address "
                 f"{s.slave or get_meter(s.meter_id).default_slave} ({s.polls} polls)")
        # one poll first: a silent bus is scanned at once, not after every poll times out
        probe = link.call_json(f"import main; main.commission(1, scan_timeout_ms="
                               f"{s.scan_timeout_ms})", timeout=90)
        report = probe
        if probe["ok"]:
            report = link.call_json(f"import main; main.commission({s.polls}, "
                                    f"scan_timeout_ms={s.scan_timeout_ms})", timeout=120)
        checks, problem = judge_meter(report, s)
        if problem:
            raise InstallError(problem)
        link_check = checks["modbus_link"]
        self.say(f"meter: {link_check['answered']}/{link_check['polls']} polls answered "
                 f"({link_check['retries']} retries, {link_check['crc_errors']} CRC errors); "
                 f"{report['power_w']} W, import {_kwh(report['ei_wh'])} kWh; CT "
                 + ("direction ok" if checks["ct_orientation"].get("checked")
                    else "direction not checked: " + checks["ct_orientation"]["note"]))
        return checks

    def _wait_for_enrolment(self, link: BoardLink, dev: str, known: dict) -> dict:
        s = self.s
        deadline = time.monotonic() + s.timeout_s
        console = ""
        enrolled_said = False
        while time.monotonic() < deadline:
            console += link.read_output(1.0)
            refused = _REFUSED.search(console)
            if refused:
                reason = refused.group(2).rstrip(":")
                raise InstallError(f"the gateway refused the code ({refused.group(1)} "
                                   f"{reason}): {CODE_HINTS.get(reason, 'see the gateway log')}")
            state = s.gateway.device(dev)
            if state.get("registered") and not enrolled_said:
                enrolled_said = True
                how = "enrolled" if state.get("enrolled") else "registered already"
                self.say(f"enrolment: {how} at the gateway as {state.get('label')!r}; "
                         "waiting for the first reading")
            last = state.get("last_reading")
            if last and last.get("signature_valid") and (
                    not known.get("last_reading")
                    or last["seq"] != known["last_reading"]["seq"]):
                return last
        if _NO_ANSWER in console or "clock: trusted" not in console:
            raise InstallError(
                f"the meter did not reach the gateway at {s.gateway.host}:"
                f"{s.gateway.coap_port} within {s.timeout_s:g} s: check the Wi-Fi name and "
                "password (--wifi), that the meter's network reaches the gateway, and the "
                "gateway's address and port")
        raise InstallError(f"no verified reading at the gateway within {s.timeout_s:g} s; "
                           "the meter's console said:\n" + console[-1500:])

    def _gateway_checks(self, first: dict) -> dict:
        skew = round(first["received_ms"] / 1000 - first["t"], 1)
        return {
            "gateway_verified": {"ok": bool(first["signature_valid"]), "seq": first["seq"],
                                 "t": first["time"], "power_w": first["p_w"]},
            "clock": {"ok": abs(skew) <= 60, "reading_age_at_gateway_s": skew},
        }


# ---- command line -----------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tools.meter_cli import guarded

    p.add_argument("--port", required=True, help="serial port of the board (/dev/ttyUSB0)")
    p.add_argument("--gateway", required=True, metavar="HOST[:PORT]",
                   help="the gateway the meter sends to (CoAP port, default 5683)")
    p.add_argument("--gateway-http", metavar="URL",
                   help="the gateway's HTTP API (default http://HOST:8683)")
    p.add_argument("--code", required=True,
                   help="the one-time code from the technician (wattshare device invite)")
    p.add_argument("--meter", required=True, help="meter id from boards/meters/ (sdm120ct)")
    p.add_argument("--ct-rating", type=int, metavar="A",
                   help="CT rating in A (default: the meter's)")
    p.add_argument("--wifi", metavar="SSID:PASSWORD", default="",
                   help="the Wi-Fi the meter joins")
    p.add_argument("--site", choices=SITES, default="consumer",
                   help="consumer: never exports (a negative power is a reversed CT); "
                        "producer: has PV and may export (default consumer)")
    p.add_argument("--pv-off", action="store_true",
                   help="producer site with its PV isolated now: check the CT direction too")
    p.add_argument("--slave", type=int, metavar="N",
                   help="the meter's Modbus address (default: the meter's default)")
    p.add_argument("--polls", type=int, default=DEFAULT_POLLS, metavar="N",
                   help=f"polls for the link check (default {DEFAULT_POLLS})")
    p.add_argument("--interval", type=int, default=10, metavar="S",
                   help="seconds between readings (default 10)")
    p.add_argument("--installer", default="installer", metavar="NAME",
                   help="who installs (goes into the commissioning record)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"how long to wait for the first verified reading "
                        f"(default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--scan-timeout", type=int, default=80, metavar="MS",
                   help="reply time allowed per address when scanning the bus (default 80)")
    p.set_defaults(func=guarded(run_command))


def settings_from_args(args: argparse.Namespace) -> Settings:
    host, coap_port = parse_host_port(args.gateway, 5683)
    http = args.gateway_http or (f"http://[{host}]:8683" if ":" in host
                                 else f"http://{host}:8683")
    try:
        code = enrolment_core.format_code(enrolment_core.parse_code(args.code))
    except CodeError as e:
        raise InstallError(f"--code: {e}: check it character by character against the "
                           "technician's (wattshare device invite)") from None
    ssid, _, password = args.wifi.partition(":")
    if args.ct_rating is not None and not 1 <= args.ct_rating <= MAX_CT_RATING_A:
        raise InstallError(f"--ct-rating {args.ct_rating}: must be 1..{MAX_CT_RATING_A} A")
    if args.slave is not None and not 1 <= args.slave <= 247:
        raise InstallError(f"--slave {args.slave}: a Modbus address is 1..247")
    if not 1 <= args.polls <= 100:
        raise InstallError(f"--polls {args.polls}: must be 1..100")
    return Settings(port=args.port, gateway=Gateway(host, coap_port, http), code=code,
                    meter_id=args.meter, ct_rating=args.ct_rating, wifi_ssid=ssid,
                    wifi_password=password, site=args.site, slave=args.slave,
                    polls=args.polls, interval_s=args.interval, installer=args.installer,
                    timeout_s=args.timeout, pv_off=args.pv_off,
                    scan_timeout_ms=args.scan_timeout)


def run_command(args: argparse.Namespace) -> int:
    Provision(settings_from_args(args)).run()
    return 0

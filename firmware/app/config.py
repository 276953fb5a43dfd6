# Configuration as validated data, checked at start. Three JSON files in the
# config folder:
#   board.json   compiled by tools/board_config.py (compile_board) from boards/*.toml
#   meter.json   compiled by tools/board_config.py (compile_meter) from boards/meters/*.toml
#   device.json  this device: gateway, interval, Modbus slave, CT rating, Wi-Fi, batch,
#                and the technician's one-time enrolment code (never echoed in errors)
# Any problem raises ConfigError "<file>: <key>: <problem, allowed values>".
import json

from wattcore.enrolment import parse_code
from wattcore.errors import CodeError

from app.errors import ConfigError

BOARD_FILE = "board.json"
METER_FILE = "meter.json"
DEVICE_FILE = "device.json"

_KINDS = ("f32", "u16", "u32le_words", "u32be_words")
_FIELDS = ("voltage_dV", "current_mA", "power_W", "frequency_cHz", "power_factor_milli",
           "import_Wh", "export_Wh", "alarm")
_REQUIRED_FIELDS = ("power_W", "import_Wh")

# key: (type, default (None = required), lo, hi); lo/hi bound ints or string lengths
_DEVICE_KEYS = {
    "gateway_host": (str, None, 1, 253),
    "gateway_port": (int, 5683, 1, 65535),
    "interval_s": (int, 10, 1, 3600),
    "slave": (int, 0, 1, 247),  # 0: the meter's default slave
    "ct_rating_A": (int, 0, 1, 10000),  # 0: the meter's default CT rating
    "wifi_ssid": (str, "", 0, 32),
    "wifi_password": (str, "", 0, 64),
    "batch_size": (int, 8, 1, 8),
    "retries": (int, 2, 0, 5),
    "reply_timeout_ms": (int, 500, 20, 5000),
    "exports_allowed": (bool, True, 0, 1),
    "spool_segments": (int, 136, 2, 1000),
    "ntp_host": (str, "", 0, 253),
    "watchdog_s": (int, 60, 10, 600),
    "enrol_code": (str, "", 0, 32),  # "": registered by hand (wattshare device add)
}


def _fail(where, key, problem):
    raise ConfigError("%s: %s: %s" % (where, key, problem))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int(where, key, v, lo, hi):
    if not _is_int(v):
        _fail(where, key, "expected an integer, got %r" % (v,))
    if v < lo or v > hi:
        _fail(where, key, "%d is not in %d..%d" % (v, lo, hi))
    return v


def parse_json(where, text):
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError("%s: not valid JSON: %s" % (where, e))
    if not isinstance(data, dict):
        raise ConfigError("%s: expected a JSON object" % where)
    return data


def check_device(data, meter, where=DEVICE_FILE):
    for key in data:
        if key not in _DEVICE_KEYS:
            _fail(where, key, "unknown key; allowed keys: %s" % ", ".join(sorted(_DEVICE_KEYS)))
    out = {}
    for key in _DEVICE_KEYS:
        kind, default, lo, hi = _DEVICE_KEYS[key]
        if key not in data:
            if default is None:
                _fail(where, key, "missing (required)")
            out[key] = default
            continue
        v = data[key]
        if key == "enrol_code":
            out[key] = _enrol_code(where, v)
            continue
        if kind is bool:
            if not isinstance(v, bool):
                _fail(where, key, "expected true or false, got %r" % (v,))
        elif kind is int:
            _int(where, key, v, lo, hi)
        elif not isinstance(v, str) or not lo <= len(v) <= hi:
            _fail(where, key, "expected a string of %d..%d characters, got %r" % (lo, hi, v))
        out[key] = v
    if not out["slave"]:
        out["slave"] = meter["slave"]
    if not out["ct_rating_A"]:
        out["ct_rating_A"] = meter["ct_rating_A"]
    return out


def _enrol_code(where, v):
    # -> the normalised code, or "" (no enrolment). The code is never repeated in an
    # error: it is a secret until it is used.
    if not isinstance(v, str):
        _fail(where, "enrol_code", "expected the code as text (XXXX-XXXX-XXXX)")
    if not v:
        return ""
    try:
        return parse_code(v)
    except CodeError as e:
        _fail(where, "enrol_code", str(e))


def check_board(data, where=BOARD_FILE):
    for key in ("id", "chip", "led_kind"):
        if not isinstance(data.get(key), str):
            _fail(where, key, "missing or not a string")
    for key in ("uart", "tx", "rx", "led", "flash_mb"):
        _int(where, key, data.get(key), 0, 48 if key != "flash_mb" else 32)
    if data.get("de_re") is not None:
        _int(where, "de_re", data["de_re"], 0, 48)
    return data


def check_meter(data, where=METER_FILE):
    if not isinstance(data.get("id"), str):
        _fail(where, "id", "missing or not a string")
    _int(where, "model", data.get("model"), 1, 255)
    if data.get("phases") not in (1, 3):
        _fail(where, "phases", "%r is not one of 1, 3" % (data.get("phases"),))
    _int(where, "baud", data.get("baud"), 1200, 115200)
    if data.get("parity") not in ("N", "E", "O"):
        _fail(where, "parity", "%r is not one of N, E, O" % (data.get("parity"),))
    if data.get("stop_bits") not in (1, 2):
        _fail(where, "stop_bits", "%r is not one of 1, 2" % (data.get("stop_bits"),))
    _int(where, "slave", data.get("slave"), 1, 247)
    if data.get("function") not in (3, 4):
        _fail(where, "function", "%r is not one of 3, 4" % (data.get("function"),))
    _int(where, "ct_rating_A", data.get("ct_rating_A"), 1, 10000)
    blocks = data.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 8:
        _fail(where, "blocks", "expected a list of 1..8 [start, count] pairs")
    for i, b in enumerate(blocks):
        if not isinstance(b, list) or len(b) != 2:
            _fail(where, "blocks[%d]" % i, "expected [start, count]")
        _int(where, "blocks[%d].start" % i, b[0], 0, 0xFFFF)
        _int(where, "blocks[%d].count" % i, b[1], 1, 125)
    fields = data.get("fields")
    if not isinstance(fields, dict):
        _fail(where, "fields", "expected an object")
    for name in fields:
        key = "fields." + name
        if name not in _FIELDS:
            _fail(where, key, "unknown field; one of %s" % ", ".join(_FIELDS))
        f = fields[name]
        if not isinstance(f, list) or len(f) != 5:
            _fail(where, key, "expected [block, offset, kind, num, den]")
        _int(where, key + "[0]", f[0], 0, len(blocks) - 1)
        width = 2 if f[2] == "u16" else 4
        _int(where, key + "[1]", f[1], 0, 2 * blocks[f[0]][1] - width)
        if f[2] not in _KINDS:
            _fail(where, key + "[2]", "%r is not one of %s" % (f[2], ", ".join(_KINDS)))
        _int(where, key + "[3]", f[3], -1000000, 1000000)
        _int(where, key + "[4]", f[4], 1, 1000000)
    for name in _REQUIRED_FIELDS:
        if name not in fields:
            _fail(where, "fields." + name, "missing (required)")
    sn = data.get("serial_number")
    if sn is not None:
        if not isinstance(sn, list) or len(sn) != 3 or sn[0] not in (3, 4) \
                or sn[2] not in _KINDS[1:]:
            _fail(where, "serial_number", "expected [function 3 or 4, register, an integer kind]")
        _int(where, "serial_number[1]", sn[1], 0, 0xFFFE)
    return data


def load(storage):
    # storage: the config folder (storage port). -> (board, meter, device) dicts
    texts = {}
    for name in (BOARD_FILE, METER_FILE, DEVICE_FILE):
        blob = storage.read(name)
        if blob is None:
            raise ConfigError("%s: missing from the config folder" % name)
        try:
            texts[name] = blob.decode()
        except UnicodeError:
            raise ConfigError("%s: not UTF-8" % name)
    board = check_board(parse_json(BOARD_FILE, texts[BOARD_FILE]))
    meter = check_meter(parse_json(METER_FILE, texts[METER_FILE]))
    device = check_device(parse_json(DEVICE_FILE, texts[DEVICE_FILE]), meter)
    return board, meter, device

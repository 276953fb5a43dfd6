# The reading: what a meter signs. A CBOR map with small integer keys and
# scaled integers only (docs/protocol.md, "Reading payload"). Both sides use
# the names below; only the integer keys go on the wire.
from wattcore import cbor
from wattcore.const import const
from wattcore.errors import CborError, EncodeError, ReadingError

DEVICE_ID_LEN = const(8)

# name: (key, min, max, required)
FIELDS = {
    "dev": (1, None, None, True),  # device id, 8 bytes (= COSE kid)
    "seq": (2, 0, 0xFFFFFFFFFFFFFFFF, True),  # sequence number, never reused
    "t": (3, 0, 0xFFFFFFFFFF, True),  # unix time, seconds
    "st": (4, 0, 0xFFFFFFFF, True),  # status / fault flags (ST_*)
    "ei": (5, 0, 0xFFFFFFFFFFFF, False),  # cumulative import energy, Wh
    "ee": (6, 0, 0xFFFFFFFFFFFF, False),  # cumulative export energy, Wh
    "p": (7, -0x80000000, 0x7FFFFFFF, False),  # active power, W, export < 0
    "u": (8, 0, 0xFFFF, False),  # voltage, 0.1 V
    "i": (9, 0, 0xFFFFFFFF, False),  # current, mA
    "f": (10, 0, 0xFFFF, False),  # frequency, 0.01 Hz
    "pf": (11, -1000, 1000, False),  # power factor, x1000
    "mdl": (12, 0, 0xFF, True),  # meter model code (model_code in boards/meters/*.toml)
    "sn": (13, 0, 0xFFFFFFFF, False),  # meter serial number
}
MEASUREMENTS = ("ei", "ee", "p", "u", "i", "f", "pf")
_BY_KEY = {}
for _name in FIELDS:
    _BY_KEY[FIELDS[_name][0]] = _name

# Status flags (key 4)
ST_CLOCK_UNTRUSTED = const(0x0001)  # time not set from NTP or the gateway
ST_METER_NO_REPLY = const(0x0002)
ST_METER_CRC = const(0x0004)
ST_METER_EXCEPTION = const(0x0008)
ST_METER_WRONG_ADDRESS = const(0x0010)
ST_VALUE_NAN = const(0x0020)  # a register decoded to NaN or infinity
ST_COUNTER_BACKWARDS = const(0x0040)
ST_POWER_OVER_RATING = const(0x0080)
ST_METER_ALARM = const(0x0100)
ST_SPOOL_OVERFLOW = const(0x0200)  # older readings were dropped (spool full)
ST_BOOT = const(0x0400)  # first reading after a restart
ST_CT_REVERSED = const(0x0800)  # power sign contradicts the counters
# Any of these: the meter values could not be trusted, so the reading carries
# no measurement at all (never a good-looking value).
ST_FAULT_MASK = const(0x09FE)



def _check(name, value):
    key, lo, hi, _ = FIELDS[name]
    if name == "dev":
        if not isinstance(value, bytes) or len(value) != DEVICE_ID_LEN:
            return "dev must be %d bytes" % DEVICE_ID_LEN
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return "%s must be an integer" % name
    if value < lo or value > hi:
        return "%s out of range" % name
    return None


def _validate(r):
    for name in FIELDS:
        if FIELDS[name][3] and name not in r:
            return "missing %s" % name
    for name in r:
        if name not in FIELDS:
            return "unknown field %s" % name
        err = _check(name, r[name])
        if err:
            return err
    if r["st"] & ST_FAULT_MASK:
        for name in MEASUREMENTS:
            if name in r:
                return "faulty reading carries %s" % name
    return None


def encode_payload(r):
    # r: dict of field name -> value. Returns the canonical CBOR payload.
    err = _validate(r)
    if err:
        raise EncodeError(err)
    m = {}
    for name in r:
        m[FIELDS[name][0]] = r[name]
    return cbor.dumps(m)


def decode_payload(data):
    # Canonical CBOR map -> dict of field names; raises ReadingError.
    try:
        m = cbor.loads(data, True)
    except CborError as e:
        raise ReadingError("payload: %s" % e)
    if not isinstance(m, dict):
        raise ReadingError("payload must be a map")
    r = {}
    for k in m:
        name = _BY_KEY.get(k) if isinstance(k, int) and not isinstance(k, bool) else None
        if name is None:
            raise ReadingError("unknown key %r" % (k,))
        r[name] = m[k]
    err = _validate(r)
    if err:
        raise ReadingError(err)
    return r


FLAG_NAMES = (
    (ST_CLOCK_UNTRUSTED, "CLOCK_UNTRUSTED"),
    (ST_METER_NO_REPLY, "METER_NO_REPLY"),
    (ST_METER_CRC, "METER_CRC"),
    (ST_METER_EXCEPTION, "METER_EXCEPTION"),
    (ST_METER_WRONG_ADDRESS, "METER_WRONG_ADDRESS"),
    (ST_VALUE_NAN, "VALUE_NAN"),
    (ST_COUNTER_BACKWARDS, "COUNTER_BACKWARDS"),
    (ST_POWER_OVER_RATING, "POWER_OVER_RATING"),
    (ST_METER_ALARM, "METER_ALARM"),
    (ST_SPOOL_OVERFLOW, "SPOOL_OVERFLOW"),
    (ST_BOOT, "BOOT"),
    (ST_CT_REVERSED, "CT_REVERSED"),
)


def flag_names(st):
    return [name for bit, name in FLAG_NAMES if st & bit]

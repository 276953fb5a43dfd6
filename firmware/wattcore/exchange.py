# The CoAP exchange between a meter and its gateway (docs/protocol.md,
# "CoAP exchange"): resource paths, the batch of signed readings in a request,
# the response map, and what a device does on each response code. Sans-IO:
# the CoAP framing itself is in wattcore.coap.
from wattcore import cbor, coap
from wattcore.const import const
from wattcore.errors import CborError, DecodeError, EncodeError

PATH_READINGS = "r"  # POST, CON: a batch of readings
PATH_TIME = "t"  # GET: gateway time, for a device whose clock is not trusted
PATH_ENROL = "e"  # POST, CON: an enrolment request (wattcore.enrolment)
PATH_COMMISSION = "c"  # POST, CON: a device-signed commissioning record
CONTENT_FORMAT_CBOR = const(60)  # application/cbor
MAX_PAYLOAD = const(5632)  # bytes of CoAP payload: 32 readings of the largest size (175 B)
DEVICE_BATCH = const(8)  # readings per message a device sends: one Wi-Fi frame
MAX_BATCH = const(32)  # readings per message

# Response map keys
RESP_ACK = const(1)  # highest seq of the stored prefix of this message
RESP_TIME = const(2)  # gateway unix time, seconds
RESP_REJECTED = const(3)  # seq of the reading that stopped processing
RESP_REASON = const(4)  # short reason token (text)
RESP_MAX_BATCH = const(5)  # readings per message the gateway accepts
RESP_CONFIRM = const(6)  # POST /e: the gateway knows the code (wattcore.enrolment)

# CoAP response codes used: defined once in wattcore.coap, re-exported here
# under the names the protocol doc uses.
CHANGED = coap.CHANGED  # 2.04
CONTENT = coap.CONTENT  # 2.05
BAD_REQUEST = coap.BAD_REQUEST  # 4.00
UNAUTHORIZED = coap.UNAUTHORIZED  # 4.01
FORBIDDEN = coap.FORBIDDEN  # 4.03
NOT_FOUND = coap.NOT_FOUND  # 4.04
METHOD_NOT_ALLOWED = coap.METHOD_NOT_ALLOWED  # 4.05
CONFLICT = coap.CONFLICT  # 4.09
TOO_LARGE = coap.REQUEST_ENTITY_TOO_LARGE  # 4.13
UNSUPPORTED_FORMAT = coap.UNSUPPORTED_CONTENT_FORMAT  # 4.15
UNPROCESSABLE = coap.UNPROCESSABLE_ENTITY  # 4.22
INTERNAL_ERROR = coap.INTERNAL_SERVER_ERROR  # 5.00
UNAVAILABLE = coap.SERVICE_UNAVAILABLE  # 5.03

# What the device does with a response (see docs/protocol.md table)
ACT_ACKED = const(0)  # drop the acknowledged readings, go on
ACT_DROP_REJECTED = const(1)  # drop acked ones; quarantine the rejected one; go on
ACT_SPLIT = const(2)  # resend fewer readings per message
ACT_BACKOFF = const(3)  # keep everything, retry later (needs a person or time)
ACT_WAIT = const(4)  # keep everything, retry after Max-Age seconds

_ACTIONS = {
    CHANGED: ACT_ACKED,
    BAD_REQUEST: ACT_DROP_REJECTED,
    CONFLICT: ACT_DROP_REJECTED,
    UNPROCESSABLE: ACT_DROP_REJECTED,
    TOO_LARGE: ACT_SPLIT,
    UNAUTHORIZED: ACT_BACKOFF,
    FORBIDDEN: ACT_BACKOFF,
    NOT_FOUND: ACT_BACKOFF,
    METHOD_NOT_ALLOWED: ACT_BACKOFF,
    UNSUPPORTED_FORMAT: ACT_BACKOFF,
    INTERNAL_ERROR: ACT_BACKOFF,
    UNAVAILABLE: ACT_WAIT,
}


def device_action(code):
    # Unknown codes are treated as "keep and back off": never lose a reading.
    return _ACTIONS.get(code, ACT_BACKOFF)


def encode_batch(signed_readings):
    # signed_readings: list of COSE_Sign1 bytes, oldest first.
    n = len(signed_readings)
    if n < 1 or n > MAX_BATCH:
        raise EncodeError("a batch holds 1..%d readings" % MAX_BATCH)
    return cbor.array_head(n) + b"".join(signed_readings)


def batch_size(signed_readings):
    # Bytes of encode_batch() without building it.
    n = 0
    for s in signed_readings:
        n += len(s)
    return n + len(cbor.array_head(len(signed_readings)))


def decode_batch(payload):
    # -> list of the exact COSE_Sign1 bytes of each reading.
    if len(payload) > MAX_PAYLOAD:
        raise DecodeError("payload over %d bytes" % MAX_PAYLOAD)
    try:
        items = cbor.split_array(payload, MAX_BATCH)
    except CborError as e:
        raise DecodeError("batch: %s" % e)
    if not items:
        raise DecodeError("empty batch")
    return items


def encode_response(time, ack=None, rejected=None, reason=None, max_batch=None,
                    confirm=None):
    m = {RESP_TIME: time}
    if confirm is not None:
        m[RESP_CONFIRM] = confirm
    if ack is not None:
        m[RESP_ACK] = ack
    if rejected is not None:
        m[RESP_REJECTED] = rejected
    if reason is not None:
        m[RESP_REASON] = reason
    if max_batch is not None:
        m[RESP_MAX_BATCH] = max_batch
    return cbor.dumps(m)


def decode_response(payload):
    # -> dict with keys "time", and when present "ack", "rejected", "reason",
    # "max_batch", "confirm". Raises DecodeError.
    try:
        m = cbor.loads(payload)
    except CborError as e:
        raise DecodeError("response: %s" % e)
    if not isinstance(m, dict):
        raise DecodeError("response must be a map")
    out = {}
    for key, name, kind in (
        (RESP_TIME, "time", int),
        (RESP_ACK, "ack", int),
        (RESP_REJECTED, "rejected", int),
        (RESP_REASON, "reason", str),
        (RESP_MAX_BATCH, "max_batch", int),
        (RESP_CONFIRM, "confirm", bytes),
    ):
        if key in m:
            v = m[key]
            if not isinstance(v, kind) or isinstance(v, bool) or (kind is int and v < 0):
                raise DecodeError("response field %s has a bad type" % name)
            out[name] = v
    if "time" not in out:
        raise DecodeError("response without gateway time")
    return out

# CoAP (RFC 7252) message encoding and decoding, sans-IO, with bounded sizes,
# plus the retransmission timing of section 4.8 as pure functions (the caller
# brings the clock and the random numbers).
#
# Message layout (section 3):
#   [ver:2 type:2 tkl:4][code][message id:16][token: tkl bytes]
#   [options: delta/length nibbles + extensions + value]...[0xFF payload]
# Options here are (number, value bytes) pairs; values are opaque bytes (use
# uint_option() for numeric options).

from wattcore.const import const
from wattcore.errors import CoapError, EncodeError

# Message types
CON = const(0)
NON = const(1)
ACK = const(2)
RST = const(3)

# Codes: class << 5 | detail
EMPTY = const(0)
GET = const(1)
POST = const(2)
PUT = const(3)
DELETE = const(4)
CREATED = const(65)  # 2.01
CHANGED = const(68)  # 2.04
CONTENT = const(69)  # 2.05
BAD_REQUEST = const(128)  # 4.00
UNAUTHORIZED = const(129)  # 4.01
BAD_OPTION = const(130)  # 4.02
FORBIDDEN = const(131)  # 4.03
NOT_FOUND = const(132)  # 4.04
METHOD_NOT_ALLOWED = const(133)  # 4.05
CONFLICT = const(137)  # 4.09
REQUEST_ENTITY_TOO_LARGE = const(141)  # 4.13
UNSUPPORTED_CONTENT_FORMAT = const(143)  # 4.15
UNPROCESSABLE_ENTITY = const(150)  # 4.22
INTERNAL_SERVER_ERROR = const(160)  # 5.00
SERVICE_UNAVAILABLE = const(163)  # 5.03
PROXYING_NOT_SUPPORTED = const(165)  # 5.05

# Option numbers
OPT_URI_HOST = const(3)
OPT_ETAG = const(4)
OPT_OBSERVE = const(6)
OPT_URI_PORT = const(7)
OPT_LOCATION_PATH = const(8)
OPT_URI_PATH = const(11)
OPT_CONTENT_FORMAT = const(12)
OPT_MAX_AGE = const(14)
OPT_URI_QUERY = const(15)
OPT_ACCEPT = const(17)
OPT_BLOCK2 = const(23)
OPT_BLOCK1 = const(27)
OPT_PROXY_URI = const(35)
OPT_PROXY_SCHEME = const(39)
OPT_SIZE1 = const(60)

# Bounds. 1152 bytes is the RFC's message size upper bound for a 1280-byte
# IPv6 MTU (section 4.6).
MAX_MESSAGE_SIZE = const(1152)
MAX_OPTIONS = const(32)
MAX_TOKEN_LENGTH = const(8)
_MAX_URI_PATH_SEGMENT = const(255)
_PAYLOAD_MARKER = const(0xFF)

# Transmission parameters (section 4.8), times in milliseconds; the random
# factor is the ratio 3/2 (no floats in the cores).
ACK_TIMEOUT_MS = const(2000)
ACK_RANDOM_FACTOR = (3, 2)
MAX_RETRANSMIT = const(4)
NSTART = const(1)
DEFAULT_LEISURE_MS = const(5000)
MAX_TRANSMIT_SPAN_MS = const(45000)
MAX_TRANSMIT_WAIT_MS = const(93000)
EXCHANGE_LIFETIME_MS = const(247000)
NON_LIFETIME_MS = const(145000)


def code_class(code):
    return code >> 5


def code_str(code):
    return f"{code >> 5}.{code & 0x1F:02d}"


# Minimal big-endian encoding of an unsigned option value; 0 is empty.
def uint_option(n):
    if not isinstance(n, int) or n < 0 or n > 0xFFFFFFFF:
        raise EncodeError(f"coap uint option {n!r}: must be 0..0xFFFFFFFF")
    length = 0
    v = n
    while v:
        length += 1
        v >>= 8
    return n.to_bytes(length, "big") if length else b""


def uint_value(value):
    if len(value) > 4:
        raise CoapError(f"coap uint option: {len(value)} bytes, at most 4")
    return int.from_bytes(value, "big")


# "r/x" or "/r/x" -> [(OPT_URI_PATH, b"r"), (OPT_URI_PATH, b"x")]; "" or "/" -> [].
def uri_path_options(path):
    if path.startswith("/"):
        path = path[1:]
    if not path:
        return []
    out = []
    for segment in path.split("/"):
        value = segment.encode("utf-8")
        if len(value) > _MAX_URI_PATH_SEGMENT:
            raise EncodeError(f"coap uri path segment over 255 bytes: {segment[:20]!r}")
        out.append((OPT_URI_PATH, value))
    return out


class Message:
    def __init__(self, mtype, code, mid, token, options, payload):
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = options  # list of (number, bytes) in wire order
        self.payload = payload

    # First value of option `number`, or None.
    def option(self, number):
        for n, v in self.options:
            if n == number:
                return v
        return None

    def options_all(self, number):
        return [v for n, v in self.options if n == number]

    def uri_path(self):
        try:
            return "/".join(v.decode("utf-8") for v in self.options_all(OPT_URI_PATH))
        except (UnicodeError, ValueError):
            raise CoapError("coap uri path is not UTF-8") from None

    def content_format(self):
        value = self.option(OPT_CONTENT_FORMAT)
        if value is None:
            return None
        if len(value) > 2:
            raise CoapError(f"coap content-format: {len(value)} bytes, at most 2")
        return int.from_bytes(value, "big")


# (nibble, extension bytes) for an option delta or length (section 3.1).
def _nibble(value):
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode(mtype, code, mid, token=b"", options=(), payload=b"", max_size=MAX_MESSAGE_SIZE):
    if mtype not in (CON, NON, ACK, RST):
        raise EncodeError(f"coap type {mtype!r}: must be 0..3")
    if not isinstance(code, int) or not 0 <= code <= 0xFF:
        raise EncodeError(f"coap code {code!r}: must be 0..255")
    if not isinstance(mid, int) or not 0 <= mid <= 0xFFFF:
        raise EncodeError(f"coap message id {mid!r}: must be 0..65535")
    if len(token) > MAX_TOKEN_LENGTH:
        raise EncodeError(f"coap token: {len(token)} bytes, at most 8")
    if len(options) > MAX_OPTIONS:
        raise EncodeError(f"coap: {len(options)} options, at most {MAX_OPTIONS}")
    if code == EMPTY and (token or options or payload):
        raise EncodeError("coap empty message with token, options or payload")
    # Stable sort by number: MicroPython's sort is not stable, so the index
    # breaks ties and repeated options keep their order.
    ordered = []
    for i, opt in enumerate(options):
        number, value = opt
        if not isinstance(number, int) or not 0 <= number <= 0xFFFF:
            raise EncodeError(f"coap option number {number!r}: must be 0..65535")
        if not isinstance(value, (bytes, bytearray)):
            raise EncodeError(f"coap option {number} value: bytes, not {type(value)!r}")
        ordered.append((number, i, value))
    ordered.sort()
    out = bytearray()
    out.append(0x40 | (mtype << 4) | len(token))
    out.append(code)
    out.append(mid >> 8)
    out.append(mid & 0xFF)
    out.extend(token)
    previous = 0
    for number, _, value in ordered:
        if len(value) > max_size or len(value) >= 65804:
            raise EncodeError(f"coap option {number} value: {len(value)} bytes")
        dn, dext = _nibble(number - previous)
        ln, lext = _nibble(len(value))
        out.append((dn << 4) | ln)
        out.extend(dext)
        out.extend(lext)
        out.extend(value)
        previous = number
    if payload:
        out.append(_PAYLOAD_MARKER)
        out.extend(payload)
    if len(out) > max_size:
        raise EncodeError(f"coap message: {len(out)} bytes, at most {max_size}")
    return bytes(out)


def decode(data, max_size=MAX_MESSAGE_SIZE):
    n = len(data)
    if n > max_size:
        raise CoapError(f"coap message: {n} bytes, at most {max_size}")
    if n < 4:
        raise CoapError(f"coap message: {n} bytes, header needs 4")
    first = data[0]
    if first >> 6 != 1:
        raise CoapError(f"coap version {first >> 6}, expected 1")
    tkl = first & 0x0F
    if tkl > MAX_TOKEN_LENGTH:
        raise CoapError(f"coap token length {tkl}, at most 8")
    code = data[1]
    if code == EMPTY and n != 4:
        # Section 4.1: an Empty message is the 4-byte header alone.
        raise CoapError(f"coap empty message with {n - 4} bytes after the header")
    pos = 4 + tkl
    if pos > n:
        raise CoapError("coap message truncated in the token")
    token = bytes(data[4:pos])
    options = []
    number = 0
    payload = b""
    while pos < n:
        byte = data[pos]
        pos += 1
        if byte == _PAYLOAD_MARKER:
            if pos == n:
                raise CoapError("coap payload marker with an empty payload")
            payload = bytes(data[pos:n])
            break
        if len(options) == MAX_OPTIONS:
            raise CoapError(f"coap message: more than {MAX_OPTIONS} options")
        delta = byte >> 4
        length = byte & 0x0F
        if delta == 15 or length == 15:
            raise CoapError("coap option with reserved nibble 15")
        delta, pos = _extended(data, pos, n, delta)
        length, pos = _extended(data, pos, n, length)
        number += delta
        if number > 0xFFFF:
            raise CoapError(f"coap option number {number} over 65535")
        if pos + length > n:
            raise CoapError(f"coap message truncated in option {number}")
        options.append((number, bytes(data[pos : pos + length])))
        pos += length
    return Message(first >> 4 & 0x03, code, (data[2] << 8) | data[3], token, options, payload)


def _extended(data, pos, n, nibble):
    if nibble == 13:
        if pos + 1 > n:
            raise CoapError("coap message truncated in an option header")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > n:
            raise CoapError("coap message truncated in an option header")
        return ((data[pos] << 8) | data[pos + 1]) + 269, pos + 2
    return nibble, pos


# First retransmission timeout, drawn uniformly from [ACK_TIMEOUT,
# ACK_TIMEOUT * ACK_RANDOM_FACTOR] = [2000, 3000] ms by a random 0..65535.
def initial_timeout_ms(rand_u16):
    if not isinstance(rand_u16, int) or not 0 <= rand_u16 <= 0xFFFF:
        raise EncodeError(f"coap random {rand_u16!r}: must be 0..65535")
    num, den = ACK_RANDOM_FACTOR
    spread = ACK_TIMEOUT_MS * (num - den) // den
    return ACK_TIMEOUT_MS + spread * rand_u16 // 0xFFFF


# Timeout after transmission number `attempt` (0 = the first send, up to
# MAX_RETRANSMIT = the last retransmission): doubles each time.
def timeout_ms(initial, attempt):
    if not isinstance(attempt, int) or not 0 <= attempt <= MAX_RETRANSMIT:
        raise EncodeError(f"coap attempt {attempt!r}: must be 0..{MAX_RETRANSMIT}")
    return initial << attempt

# Shared tests for wattcore.coap (CPython and the MicroPython VM). Expected
# bytes are built by hand from RFC 7252 section 3, byte by byte in comments.
from support import raises
from wattcore import coap as c
from wattcore.errors import CoapError, DecodeError, EncodeError

H = bytes.fromhex


def test_code_constants():
    pairs = [
        (c.GET, 0, 1),
        (c.POST, 0, 2),
        (c.CREATED, 2, 1),
        (c.CHANGED, 2, 4),
        (c.CONTENT, 2, 5),
        (c.BAD_REQUEST, 4, 0),
        (c.UNAUTHORIZED, 4, 1),
        (c.FORBIDDEN, 4, 3),
        (c.NOT_FOUND, 4, 4),
        (c.METHOD_NOT_ALLOWED, 4, 5),
        (c.CONFLICT, 4, 9),
        (c.REQUEST_ENTITY_TOO_LARGE, 4, 13),
        (c.UNSUPPORTED_CONTENT_FORMAT, 4, 15),
        (c.UNPROCESSABLE_ENTITY, 4, 22),
        (c.INTERNAL_SERVER_ERROR, 5, 0),
        (c.SERVICE_UNAVAILABLE, 5, 3),
    ]
    for code, cls, detail in pairs:
        assert code == cls << 5 | detail
        assert c.code_class(code) == cls
        assert c.code_str(code) == f"{cls}.{detail:02d}"
    assert c.code_str(c.CONTENT) == "2.05"
    assert c.code_str(c.UNPROCESSABLE_ENTITY) == "4.22"
    assert c.code_str(c.EMPTY) == "0.00"
    assert (c.CON, c.NON, c.ACK, c.RST) == (0, 1, 2, 3)


def test_option_constants():
    assert (c.OPT_URI_HOST, c.OPT_ETAG, c.OPT_OBSERVE, c.OPT_URI_PORT, c.OPT_LOCATION_PATH) == (
        3,
        4,
        6,
        7,
        8,
    )
    assert (c.OPT_URI_PATH, c.OPT_CONTENT_FORMAT, c.OPT_MAX_AGE, c.OPT_URI_QUERY, c.OPT_ACCEPT) == (
        11,
        12,
        14,
        15,
        17,
    )
    assert (c.OPT_BLOCK2, c.OPT_BLOCK1, c.OPT_SIZE1) == (23, 27, 60)


def test_uint_option():
    assert c.uint_option(0) == b""
    assert c.uint_option(1) == b"\x01"
    assert c.uint_option(60) == b"\x3c"
    assert c.uint_option(255) == b"\xff"
    assert c.uint_option(256) == b"\x01\x00"
    assert c.uint_option(0x10000) == b"\x01\x00\x00"
    assert c.uint_option(0xFFFFFFFF) == b"\xff\xff\xff\xff"
    assert raises(EncodeError, c.uint_option, -1)
    assert raises(EncodeError, c.uint_option, 0x100000000)
    assert c.uint_value(b"") == 0
    assert c.uint_value(b"\x01\x00") == 256
    assert raises(CoapError, c.uint_value, b"\x01\x00\x00\x00\x00")


def test_uri_path_options():
    assert c.uri_path_options("r/x") == [(11, b"r"), (11, b"x")]
    assert c.uri_path_options("/r/x") == [(11, b"r"), (11, b"x")]
    assert c.uri_path_options("") == []
    assert c.uri_path_options("/") == []
    assert c.uri_path_options("a//b") == [(11, b"a"), (11, b""), (11, b"b")]
    assert c.uri_path_options("\u00e9") == [(11, b"\xc3\xa9")]
    assert len(c.uri_path_options("a" * 255)[0][1]) == 255
    assert raises(EncodeError, c.uri_path_options, "a" * 256)


def test_encode_known_request():
    # 0x41: ver 1, CON, TKL 1 | 0x01 GET | MID 0x1234 | token AB
    # 0xB1: delta 11 (Uri-Path), length 1, "r" | 0x01: delta 0, length 1, "x"
    raw = c.encode(c.CON, c.GET, 0x1234, b"\xab", c.uri_path_options("r/x"))
    assert raw == H("41011234AB B172 0178")


def test_encode_known_post_with_payload():
    # 0x50: ver 1, NON, TKL 0 | 0x02 POST | MID 1
    # B1 72: Uri-Path "r" | 11 3C: delta 1 (Content-Format 12), length 1, 60
    # FF: payload marker | 01 02
    opts = [(c.OPT_CONTENT_FORMAT, c.uint_option(60))] + c.uri_path_options("r")
    raw = c.encode(c.NON, c.POST, 1, b"", opts, b"\x01\x02")
    assert raw == H("50020001 B172 113C FF0102")


def test_encode_known_responses():
    # Piggybacked 2.04: 0x61 ver 1, ACK, TKL 1 | 0x44 | MID | token.
    assert c.encode(c.ACK, c.CHANGED, 0x1234, b"\xab") == H("61441234AB")
    # Empty ACK and RST are the 4-byte header alone.
    assert c.encode(c.ACK, c.EMPTY, 0xBEEF) == H("6000BEEF")
    assert c.encode(c.RST, c.EMPTY, 0) == H("70000000")
    # Content-Format 0 (text/plain) is an empty uint: 0xC0 delta 12, length 0.
    assert c.encode(
        c.ACK, c.CONTENT, 7, b"", [(c.OPT_CONTENT_FORMAT, c.uint_option(0))], b"hi"
    ) == (H("60450007 C0 FF") + b"hi")


def test_encode_extended_deltas():
    # Delta 12 fits the nibble; 13 takes one extra byte (value - 13).
    assert c.encode(c.CON, c.GET, 0, b"", [(12, b"")]) == H("40010000 C0")
    assert c.encode(c.CON, c.GET, 0, b"", [(13, b"")]) == H("40010000 D000")
    assert c.encode(c.CON, c.GET, 0, b"", [(268, b"")]) == H("40010000 D0FF")
    # 269 and over take two extra bytes (value - 269).
    assert c.encode(c.CON, c.GET, 0, b"", [(269, b"")]) == H("40010000 E00000")
    assert c.encode(c.CON, c.GET, 0, b"", [(65535, b"")]) == H("40010000 E0FEF2")
    # Size1 (60) from 0: delta 60 = 13 + 0x2F; then Size1 value 1024 = 04 00.
    assert c.encode(c.CON, c.GET, 0, b"", [(c.OPT_SIZE1, c.uint_option(1024))]) == H(
        "40010000 D22F0400"
    )
    # Deltas are relative: Uri-Path (11) then Size1 (60) -> delta 49 = 13 + 0x24.
    assert c.encode(c.CON, c.GET, 0, b"", [(60, b""), (11, b"")]) == H("40010000 B0 D024")


def test_encode_extended_lengths():
    for n, head in ((12, "BC"), (13, "BD00"), (268, "BDFF"), (269, "BE0000"), (300, "BE001F")):
        value = b"v" * n
        raw = c.encode(c.CON, c.GET, 0, b"", [(11, value)])
        assert raw == H("40010000" + head) + value, n


def test_encode_sorts_stably():
    # MicroPython's sort is not stable; repeated options must keep their order.
    opts = []
    for i in range(16):
        opts.append((c.OPT_URI_QUERY, f"q{i}".encode()))
        opts.append((c.OPT_URI_PATH, f"p{i}".encode()))
    msg = c.decode(c.encode(c.CON, c.POST, 5, b"", opts))
    assert msg.options_all(c.OPT_URI_PATH) == [f"p{i}".encode() for i in range(16)]
    assert msg.options_all(c.OPT_URI_QUERY) == [f"q{i}".encode() for i in range(16)]
    assert [n for n, _ in msg.options] == [11] * 16 + [15] * 16


def test_encode_rejects():
    assert raises(EncodeError, c.encode, 4, c.GET, 0)
    assert raises(EncodeError, c.encode, -1, c.GET, 0)
    assert raises(EncodeError, c.encode, c.CON, 256, 0)
    assert raises(EncodeError, c.encode, c.CON, -1, 0)
    assert raises(EncodeError, c.encode, c.CON, c.GET, 0x10000)
    assert raises(EncodeError, c.encode, c.CON, c.GET, -1)
    assert raises(EncodeError, c.encode, c.CON, c.GET, 0, b"123456789")
    assert raises(EncodeError, c.encode, c.CON, c.GET, 0, b"", [(-1, b"")])
    assert raises(EncodeError, c.encode, c.CON, c.GET, 0, b"", [(65536, b"")])
    assert raises(EncodeError, c.encode, c.CON, c.GET, 0, b"", [(11, "r")])
    assert raises(EncodeError, c.encode, c.CON, c.GET, 0, b"", [(11, b"")] * 33)
    assert raises(EncodeError, c.encode, c.CON, c.EMPTY, 0, b"\x01")
    assert raises(EncodeError, c.encode, c.CON, c.EMPTY, 0, b"", [(11, b"")])
    assert raises(EncodeError, c.encode, c.CON, c.EMPTY, 0, b"", (), b"x")
    assert raises(EncodeError, c.encode, c.CON, c.POST, 0, b"", (), b"x" * 1148)
    assert len(c.encode(c.CON, c.POST, 0, b"", (), b"x" * 1147)) == 1152
    assert raises(EncodeError, c.encode, c.CON, c.POST, 0, b"", (), b"x" * 20, 10)
    assert len(c.encode(c.CON, c.GET, 0, b"", [(11, b"")] * 32)) == 4 + 32


def test_decode_known_request():
    msg = c.decode(H("41011234AB B172 0178"))
    assert msg.mtype == c.CON
    assert msg.code == c.GET
    assert msg.mid == 0x1234
    assert msg.token == b"\xab"
    assert msg.options == [(11, b"r"), (11, b"x")]
    assert msg.payload == b""
    assert msg.uri_path() == "r/x"
    assert msg.option(c.OPT_URI_PATH) == b"r"
    assert msg.option(c.OPT_URI_QUERY) is None
    assert msg.options_all(c.OPT_URI_QUERY) == []
    assert msg.content_format() is None


def test_decode_known_post():
    for data in (H("50020001B172113CFF0102"), bytearray(H("50020001B172113CFF0102"))):
        msg = c.decode(data)
        assert (msg.mtype, msg.code, msg.mid, msg.token) == (c.NON, c.POST, 1, b"")
        assert msg.uri_path() == "r"
        assert msg.content_format() == 60
        assert msg.payload == b"\x01\x02"
        assert isinstance(msg.payload, bytes)
    msg = c.decode(memoryview(H("50020001B172113CFF0102")))
    assert msg.payload == b"\x01\x02" and msg.options[0][1] == b"r"
    assert c.decode(H("60450007C0FF6869")).content_format() == 0


def test_decode_extended():
    msg = c.decode(H("40010000 D000 D0F2 E00000"))
    # 13, then 13 + (13 + 0xF2) = 268, then 268 + 269 = 537.
    assert [n for n, _ in msg.options] == [13, 268, 537]
    msg = c.decode(H("40010000 E0FEF2"))
    assert msg.options == [(65535, b"")]
    for n, head in ((12, "BC"), (13, "BD00"), (268, "BDFF"), (269, "BE0000"), (300, "BE001F")):
        msg = c.decode(H("40010000" + head) + b"v" * n)
        assert msg.options == [(11, b"v" * n)], n


def test_decode_empty_messages():
    msg = c.decode(H("6000BEEF"))
    assert (msg.mtype, msg.code, msg.mid, msg.token, msg.options, msg.payload) == (
        c.ACK,
        0,
        0xBEEF,
        b"",
        [],
        b"",
    )
    assert c.decode(H("70000000")).mtype == c.RST


def test_decode_errors():
    bad = [
        b"",
        H("40"),
        H("400100"),
        H("00010000"),  # version 0
        H("80010000"),  # version 2
        H("C0010000"),  # version 3
        H("49010000 0102030405060708 09"),  # TKL 9
        H("4F010000"),  # TKL 15
        H("42010000AB"),  # token truncated
        H("40010000D0"),  # delta extension missing
        H("40010000E000"),  # delta extension short
        H("400100000D"),  # length extension missing
        H("400100000E00"),  # length extension short
        H("40010000B3616263"[:-2]),  # value truncated
        H("40010000F0"),  # delta nibble 15
        H("400100000F"),  # length nibble 15
        H("40010000BF"),  # length nibble 15
        H("40010000FF"),  # payload marker, empty payload
        H("40010000B172FF"),  # same after an option
        H("41000000AB"),  # empty message with a token
        H("40000000FF01"),  # empty message with a payload
        H("40000000B172"),  # empty message with an option
        H("40010000E0FEF201"),  # option number 65536
        H("40010000") + H("B0") + H("00") * 32,  # 33 options
    ]
    for data in bad:
        assert raises(CoapError, c.decode, data), data
    assert len(c.decode(H("40010000") + H("B0") + H("00") * 31).options) == 32
    assert raises(CoapError, c.decode, H("40020000FF") + b"x" * 1148)
    assert len(c.decode(H("40020000FF") + b"x" * 1147).payload) == 1147
    assert raises(CoapError, c.decode, H("40020000FF") + b"x" * 6, 10)
    assert issubclass(CoapError, DecodeError)


def test_message_helper_errors():
    msg = c.decode(H("40010000 B2FFFE"))
    assert raises(CoapError, msg.uri_path)
    msg = c.decode(H("40010000 C3010203"))
    assert raises(CoapError, msg.content_format)


def test_round_trip():
    opts = [
        (c.OPT_URI_HOST, b"gw.local"),
        (c.OPT_URI_PATH, b"r"),
        (c.OPT_CONTENT_FORMAT, c.uint_option(60)),
        (c.OPT_URI_QUERY, b"d=1"),
        (c.OPT_SIZE1, c.uint_option(300)),
        (c.OPT_BLOCK1, c.uint_option(0x0E)),
        (c.OPT_ETAG, b"\x01\x02\x03\x04"),
    ]
    payload = bytes(range(256))
    raw = c.encode(c.CON, c.POST, 0xFFFF, b"\x00" * 8, opts, payload)
    msg = c.decode(raw)
    assert (msg.mtype, msg.code, msg.mid, msg.token) == (c.CON, c.POST, 0xFFFF, b"\x00" * 8)
    assert msg.options == sorted(opts)
    assert msg.payload == payload
    assert c.encode(msg.mtype, msg.code, msg.mid, msg.token, msg.options, msg.payload) == raw


def test_retransmission_timing():
    assert c.ACK_TIMEOUT_MS == 2000
    assert c.ACK_RANDOM_FACTOR == (3, 2)
    assert c.MAX_RETRANSMIT == 4
    assert c.initial_timeout_ms(0) == 2000
    assert c.initial_timeout_ms(0xFFFF) == 3000
    assert c.initial_timeout_ms(0x8000) == 2500  # 2000 + 32768000 // 65535
    last = 0
    for r in range(0, 0x10000, 997):
        t = c.initial_timeout_ms(r)
        assert 2000 <= t <= 3000 and t >= last
        last = t
    assert [c.timeout_ms(2000, a) for a in range(5)] == [2000, 4000, 8000, 16000, 32000]
    assert raises(EncodeError, c.initial_timeout_ms, -1)
    assert raises(EncodeError, c.initial_timeout_ms, 0x10000)
    assert raises(EncodeError, c.timeout_ms, 2000, 5)
    assert raises(EncodeError, c.timeout_ms, 2000, -1)


def test_derived_transmission_parameters():
    # RFC 7252 section 4.8.2 with the largest initial timeout.
    worst = c.initial_timeout_ms(0xFFFF)
    span = sum(c.timeout_ms(worst, a) for a in range(c.MAX_RETRANSMIT))
    wait = sum(c.timeout_ms(worst, a) for a in range(c.MAX_RETRANSMIT + 1))
    assert span == c.MAX_TRANSMIT_SPAN_MS == 45000
    assert wait == c.MAX_TRANSMIT_WAIT_MS == 93000
    max_latency, processing_delay = 100000, c.ACK_TIMEOUT_MS
    assert c.EXCHANGE_LIFETIME_MS == span + 2 * max_latency + processing_delay
    assert c.NON_LIFETIME_MS == span + max_latency

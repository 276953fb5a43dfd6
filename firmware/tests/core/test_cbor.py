# Shared CBOR tests: run under CPython (pytest) and in the MicroPython VM.
from support import raises
from wattcore import cbor
from wattcore.cbor import Tag
from wattcore.errors import CborError, EncodeError

# (value, expected hex) from RFC 8949 Appendix A, restricted to our types
RFC_EXAMPLES = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (Tag(1, 1363896240), "c11a514b67b0"),
    (Tag(23, b"\x01\x02\x03\x04"), "d74401020304"),
]


def test_rfc8949_examples_encode():
    for value, hexstr in RFC_EXAMPLES:
        assert cbor.dumps(value) == bytes.fromhex(hexstr), hexstr


def test_rfc8949_examples_decode():
    for value, hexstr in RFC_EXAMPLES:
        assert cbor.loads(bytes.fromhex(hexstr), True) == value, hexstr


def test_map_keys_sorted_bytewise():
    # deterministic order: by encoded key bytes, so 10 (0x0a) < 100 (0x1864) < -1 (0x20)
    assert cbor.dumps({-1: 0, 100: 0, 10: 0}) == bytes.fromhex("a30a00186400" + "2000")
    assert cbor.dumps({"b": 1, "a": 2, 1: 3}) == bytes.fromhex("a3010361610261620" + "1")


def test_refuses_floats_and_unknown_types():
    assert raises(EncodeError, cbor.dumps, 1.5)
    assert raises(EncodeError, cbor.dumps, {1: 2.0})
    assert raises(EncodeError, cbor.dumps, 2**64)
    assert raises(EncodeError, cbor.dumps, -(2**64) - 1)
    for hexstr in ("f93c00", "fa47c35000", "fb3ff199999999999a"):
        assert raises(CborError, cbor.loads, bytes.fromhex(hexstr))


def test_malformed_input_raises_cbor_error():
    bad = [
        "",  # empty
        "18",  # truncated head
        "1a0000",  # truncated uint32
        "62c3",  # truncated text
        "83010203" + "04",  # trailing byte
        "9f01ff",  # indefinite array
        "5f4101ff",  # indefinite bytes
        "1c",  # reserved additional info
        "a10102" + "03",  # trailing
        "a1",  # map missing key
        "a201020102",  # duplicate key
        "62c328",  # invalid UTF-8
        "f0",  # unassigned simple value
        "9b00000000ffffffff",  # absurd array length
        "a18001",  # array as map key
    ]
    for hexstr in bad:
        assert raises(CborError, cbor.loads, bytes.fromhex(hexstr)), hexstr


def test_depth_is_bounded():
    deep = bytes.fromhex("81" * 40 + "00")
    assert raises(CborError, cbor.loads, deep)
    ok = bytes.fromhex("81" * 10 + "00")
    v = cbor.loads(ok)
    for _ in range(10):
        v = v[0]
    assert v == 0


def test_canonical_mode_refuses_non_shortest_and_unsorted():
    assert cbor.loads(bytes.fromhex("1817")) == 23  # lenient by default
    assert raises(CborError, cbor.loads, bytes.fromhex("1817"), True)
    assert raises(CborError, cbor.loads, bytes.fromhex("190017"), True)
    assert raises(CborError, cbor.loads, bytes.fromhex("a203040102"), True)
    assert cbor.loads(bytes.fromhex("a203040102")) == {1: 2, 3: 4}


def test_split_array_keeps_exact_item_bytes():
    items = [cbor.dumps(Tag(18, [b"x", {4: b"k"}, b"p", b"s"])), cbor.dumps(7), cbor.dumps("z")]
    data = cbor.array_head(3) + b"".join(items)
    assert cbor.split_array(data) == items
    assert raises(CborError, cbor.split_array, cbor.dumps({1: 2}))
    assert raises(CborError, cbor.split_array, data + b"\x00")
    assert raises(CborError, cbor.split_array, data[:-1])
    assert raises(CborError, cbor.split_array, cbor.array_head(5) + b"\x01" * 5, 4)


def test_round_trip_nested():
    value = {1: b"dev", 2: 2**63, 3: [-5, "x", {4: None}], 4: Tag(18, [True, False])}
    assert cbor.loads(cbor.dumps(value), True) == value

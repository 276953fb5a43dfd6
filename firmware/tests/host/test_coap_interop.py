"""CoAP core against aiocoap 0.4.17 (the independent implementation), plus
fuzzing of the decoder."""

from aiocoap import Message as AioMessage
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import OpaqueOption
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from wattcore import coap as c
from wattcore.errors import CoapError, EncodeError

_KNOWN = {int(n) for n in OptionNumber}

mtypes = st.sampled_from([c.CON, c.NON, c.ACK, c.RST])
codes = st.integers(min_value=1, max_value=255)
mids = st.integers(min_value=0, max_value=0xFFFF)
tokens = st.binary(max_size=8)
payloads = st.binary(max_size=120)


def _uint(max_value):
    return st.integers(min_value=0, max_value=max_value).map(c.uint_option)


def _text(max_size):
    return st.text(max_size=max_size).map(lambda s: s.encode("utf-8"))


# (number, value) pairs whose values are canonical for aiocoap's typed option
# classes, so aiocoap's decode -> encode gives back the same bytes.
options = st.one_of(
    st.tuples(st.sampled_from([c.OPT_URI_PATH, c.OPT_URI_QUERY, c.OPT_LOCATION_PATH]), _text(20)),
    st.tuples(st.just(c.OPT_URI_HOST), _text(12)),
    st.tuples(st.sampled_from([c.OPT_CONTENT_FORMAT, c.OPT_ACCEPT]), _uint(0xFFFF)),
    st.tuples(
        st.sampled_from([c.OPT_MAX_AGE, c.OPT_SIZE1, c.OPT_OBSERVE, c.OPT_URI_PORT]),
        _uint(0xFFFFFFFF),
    ),
    st.tuples(st.sampled_from([c.OPT_BLOCK1, c.OPT_BLOCK2]), _uint(0xFFFFFF)),
    st.tuples(st.just(c.OPT_ETAG), st.binary(min_size=1, max_size=8)),
    # Unregistered numbers (opaque to aiocoap) reach the 13/269 extensions;
    # values up to 280 bytes reach the extended lengths.
    st.tuples(
        st.integers(min_value=0, max_value=0xFFFF).filter(lambda n: n not in _KNOWN),
        st.binary(max_size=280),
    ),
)
option_lists = st.lists(options, max_size=6)


def _aiocoap_message(mtype, code, mid, token, opts, payload):
    msg = AioMessage(code=code, _mtype=mtype, _mid=mid, _token=token, payload=payload)
    for number, value in opts:
        msg.opt.add_option(OpaqueOption(number, value))
    return msg


def _aiocoap_fields(raw):
    msg = AioMessage.decode(raw)
    opts = [(int(o.number), o.encode()) for o in msg.opt.option_list()]
    return int(msg.mtype), int(msg.code), msg.mid, msg.token, opts, msg.payload


def _stable_sorted(opts):
    return sorted(opts, key=lambda o: o[0])  # CPython's sort is stable


@settings(max_examples=200, deadline=None)
@given(mtypes, codes, mids, tokens, option_lists, payloads)
def test_encode_equals_aiocoap(mtype, code, mid, token, opts, payload):
    theirs = _aiocoap_message(mtype, code, mid, token, opts, payload).encode()
    assume(len(theirs) <= c.MAX_MESSAGE_SIZE)
    assert c.encode(mtype, code, mid, token, opts, payload) == theirs


@settings(max_examples=200, deadline=None)
@given(mtypes, codes, mids, tokens, option_lists, payloads)
def test_decode_aiocoap_bytes(mtype, code, mid, token, opts, payload):
    raw = _aiocoap_message(mtype, code, mid, token, opts, payload).encode()
    assume(len(raw) <= c.MAX_MESSAGE_SIZE)
    msg = c.decode(raw)
    assert (msg.mtype, msg.code, msg.mid, msg.token) == (mtype, code, mid, token)
    assert msg.options == _stable_sorted(opts)
    assert msg.payload == payload
    assert msg.uri_path() == "/".join(v.decode() for n, v in opts if n == c.OPT_URI_PATH)


@settings(max_examples=200, deadline=None)
@given(mtypes, codes, mids, tokens, option_lists, payloads)
def test_aiocoap_decodes_ours(mtype, code, mid, token, opts, payload):
    try:
        raw = c.encode(mtype, code, mid, token, opts, payload)
    except EncodeError:
        assume(False)
    fields = _aiocoap_fields(raw)
    assert fields == (mtype, code, mid, token, _stable_sorted(opts), payload)


@settings(max_examples=20, deadline=None)
@given(mtypes, mids)
def test_empty_message_equals_aiocoap(mtype, mid):
    raw = c.encode(mtype, c.EMPTY, mid)
    assert raw == _aiocoap_message(mtype, 0, mid, b"", [], b"").encode()
    assert _aiocoap_fields(raw) == (mtype, 0, mid, b"", [], b"")


def _check_decode(data):
    # decode either refuses with CoapError or returns a Message that encodes
    # back to exactly the same bytes (the wire format has one encoding per
    # message) and that aiocoap frames the same way.
    try:
        msg = c.decode(data)
    except CoapError:
        return
    assert isinstance(msg, c.Message)
    assert c.encode(msg.mtype, msg.code, msg.mid, msg.token, msg.options, msg.payload) == data
    try:
        theirs = AioMessage.decode(data)
    except UnicodeDecodeError:
        return  # aiocoap also checks that text options are UTF-8; framing is ours
    assert (int(theirs.mtype), int(theirs.code), theirs.mid, theirs.token, theirs.payload) == (
        msg.mtype,
        msg.code,
        msg.mid,
        msg.token,
        msg.payload,
    )
    their_opts = list(theirs.opt.option_list())
    assert [int(o.number) for o in their_opts] == [n for n, _ in msg.options]
    for (number, value), o in zip(msg.options, their_opts, strict=True):
        # aiocoap keeps typed values; read our bytes with the same type.
        assert OptionNumber(number).create_option(decode=value).encode() == o.encode()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_decode_fuzz_random_bytes(data):
    _check_decode(data)


@settings(max_examples=400, deadline=None)
@given(mtypes, st.integers(min_value=0, max_value=8), st.binary(max_size=80))
def test_decode_fuzz_valid_header(mtype, tkl, rest):
    # A valid first byte gets the fuzz past the header into the options.
    _check_decode(bytes([0x40 | mtype << 4 | tkl]) + rest)


@settings(max_examples=200, deadline=None)
@given(mtypes, codes, mids, tokens, option_lists, payloads, st.data())
def test_decode_fuzz_mutated_messages(mtype, code, mid, token, opts, payload, data):
    try:
        raw = bytearray(c.encode(mtype, code, mid, token, opts, payload))
    except EncodeError:
        assume(False)
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[i] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    _check_decode(bytes(raw[:cut]))


def test_code_and_option_numbers_equal_aiocoap():
    # every code and option number of the core, named as aiocoap names it
    from aiocoap.numbers.codes import Code

    checked = 0
    for name in dir(c):
        value = getattr(c, name)
        if name.startswith("OPT_"):
            assert int(OptionNumber[name[4:]]) == value, name
            checked += 1
        elif name in Code.__members__:
            assert int(Code[name]) == value, name
            checked += 1
    assert checked >= 30  # the names match, so nothing was skipped silently

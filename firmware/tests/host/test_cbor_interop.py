"""CBOR core against cbor2 (the independent implementation), plus fuzzing."""

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from wattcore import cbor
from wattcore.cbor import Tag
from wattcore.errors import CborError

u64 = st.integers(min_value=0, max_value=2**64 - 1)
ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
leaves = st.one_of(ints, st.binary(max_size=40), st.text(max_size=20), st.booleans(), st.none())
keys = st.one_of(ints, st.text(max_size=8), st.binary(max_size=8))


def _ours_to_cbor2(v):
    # RFC 8949 deterministic order sorts map keys by their encoded bytes;
    # cbor2 5.x's canonical mode sorts length-first (RFC 7049), so hand cbor2
    # the keys already in bytewise order and let it keep insertion order.
    if isinstance(v, Tag):
        return cbor2.CBORTag(v.tag, _ours_to_cbor2(v.value))
    if isinstance(v, list):
        return [_ours_to_cbor2(x) for x in v]
    if isinstance(v, dict):
        ordered = sorted(v.items(), key=lambda kv: cbor2.dumps(kv[0]))
        return {k: _ours_to_cbor2(x) for k, x in ordered}
    return v


def _cbor2_to_ours(v):
    if isinstance(v, cbor2.CBORTag):
        return Tag(v.tag, _cbor2_to_ours(v.value))
    if isinstance(v, (list, tuple)):
        return [_cbor2_to_ours(x) for x in v]
    if isinstance(v, dict):
        return {k: _cbor2_to_ours(x) for k, x in v.items()}
    return v


values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(keys, children, max_size=6),
        # tags cbor2 gives no meaning to (it decodes tag 0/1/2... into objects)
        st.builds(Tag, st.one_of(st.just(18), st.integers(6000, 2**32)), children),
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_encoding_equals_cbor2_canonical(value):
    ours = cbor.dumps(value)
    assert ours == cbor2.dumps(_ours_to_cbor2(value))
    assert _cbor2_to_ours(cbor2.loads(ours)) == value


@settings(max_examples=400, deadline=None)
@given(values)
def test_decodes_what_cbor2_encodes(value):
    data = cbor2.dumps(_ours_to_cbor2(value))
    assert cbor.loads(data, canonical=True) == value


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes_only_cbor_error(data):
    try:
        cbor.loads(data)
    except CborError:
        pass


@settings(max_examples=1000, deadline=None)
@given(values, st.data())
def test_fuzz_mutated_encodings_only_cbor_error(value, data):
    enc = bytearray(cbor.dumps(value))
    pos = data.draw(st.integers(min_value=0, max_value=len(enc) - 1))
    enc[pos] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(enc)))
    for candidate in (bytes(enc), bytes(enc[:cut])):
        try:
            cbor.loads(candidate, canonical=data.draw(st.booleans()))
        except CborError:
            pass
        try:
            cbor.split_array(candidate)
        except CborError:
            pass

# CBOR (RFC 8949) for the types the Wattshare protocol uses: unsigned and
# negative integers (64-bit range), byte and text strings, arrays, maps, tags,
# false/true/null. Encoding is deterministic (RFC 8949 section 4.2.1: shortest
# heads, definite lengths, map keys sorted by their encoded bytes). Floats are
# refused both ways: the protocol carries scaled integers only.
from wattcore.const import const
from wattcore.errors import CborError, EncodeError

_MAX_DEPTH = const(16)
_MAX_ITEMS = const(4096)
_U64 = 0xFFFFFFFFFFFFFFFF


class Tag:
    # A tagged data item (major type 6).
    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


def _head(major, n):
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 0x100:
        return bytes((m | 24, n))
    if n < 0x10000:
        return bytes((m | 25, n >> 8, n & 0xFF))
    if n < 0x100000000:
        return bytes((m | 26,)) + n.to_bytes(4, "big")
    if n <= _U64:
        return bytes((m | 27,)) + n.to_bytes(8, "big")
    raise EncodeError("integer out of CBOR range")


def _enc(obj, out, depth):
    if depth > _MAX_DEPTH:
        raise EncodeError("nesting too deep")
    # bool before int: True is an int in CPython
    if obj is False:
        out.append(b"\xf4")
    elif obj is True:
        out.append(b"\xf5")
    elif obj is None:
        out.append(b"\xf6")
    elif isinstance(obj, int):
        if obj >= 0:
            out.append(_head(0, obj))
        else:
            out.append(_head(1, -1 - obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        out.append(_head(2, len(obj)))
        out.append(bytes(obj))
    elif isinstance(obj, str):
        b = obj.encode()
        out.append(_head(3, len(b)))
        out.append(b)
    elif isinstance(obj, (list, tuple)):
        out.append(_head(4, len(obj)))
        for item in obj:
            _enc(item, out, depth + 1)
    elif isinstance(obj, dict):
        items = []
        for k in obj:
            kb = []
            _enc(k, kb, depth + 1)
            vb = []
            _enc(obj[k], vb, depth + 1)
            items.append((b"".join(kb), b"".join(vb)))
        items.sort(key=lambda kv: kv[0])
        out.append(_head(5, len(items)))
        for kb, vb in items:
            out.append(kb)
            out.append(vb)
    elif isinstance(obj, Tag):
        out.append(_head(6, obj.tag))
        _enc(obj.value, out, depth + 1)
    else:
        raise EncodeError("cannot encode type %s" % type(obj).__name__)


def dumps(obj):
    out = []
    _enc(obj, out, 0)
    return b"".join(out)


class _Decoder:
    def __init__(self, data, canonical):
        self.data = data
        self.pos = 0
        self.canonical = canonical
        self.items = 0

    def _take(self, n):
        p = self.pos
        if n > len(self.data) - p:
            raise CborError("truncated")
        self.pos = p + n
        return self.data[p : p + n]

    def _arg(self, info):
        if info < 24:
            return info
        if info == 24:
            n = self._take(1)[0]
            small = 24
        elif info == 25:
            n = int.from_bytes(self._take(2), "big")
            small = 0x100
        elif info == 26:
            n = int.from_bytes(self._take(4), "big")
            small = 0x10000
        elif info == 27:
            n = int.from_bytes(self._take(8), "big")
            small = 0x100000000
        elif info == 31:
            raise CborError("indefinite length not allowed")
        else:
            raise CborError("reserved additional info %d" % info)
        if self.canonical and n < small:
            raise CborError("non-shortest integer head")
        return n

    def item(self, depth):
        if depth > _MAX_DEPTH:
            raise CborError("nesting too deep")
        self.items += 1
        if self.items > _MAX_ITEMS:
            raise CborError("too many items")
        ib = self._take(1)[0]
        major = ib >> 5
        info = ib & 0x1F
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 22:
                return None
            if info in (25, 26, 27):
                raise CborError("floats are not allowed")
            raise CborError("unsupported simple value %d" % info)
        n = self._arg(info)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return bytes(self._take(n))
        if major == 3:
            try:
                return str(bytes(self._take(n)), "utf-8")
            except UnicodeError:
                raise CborError("invalid UTF-8 in text string")
        if major == 4:
            if n > len(self.data) - self.pos:  # each item is at least one byte
                raise CborError("truncated array")
            return [self.item(depth + 1) for _ in range(n)]
        if major == 5:
            if 2 * n > len(self.data) - self.pos:
                raise CborError("truncated map")
            m = {}
            last = None
            for _ in range(n):
                kstart = self.pos
                k = self.item(depth + 1)
                # keys: integers and strings only (bool would collide with 0/1)
                if not isinstance(k, (int, str, bytes)) or k is True or k is False:
                    raise CborError("map key must be an integer or a string")
                if self.canonical:
                    kb = bytes(self.data[kstart : self.pos])
                    if last is not None and kb <= last:
                        raise CborError("map keys not in canonical order")
                    last = kb
                if k in m:
                    raise CborError("duplicate map key")
                m[k] = self.item(depth + 1)
            return m
        # major == 6
        return Tag(n, self.item(depth + 1))


def _view(data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CborError("expected bytes")
    return memoryview(data)


def loads(data, canonical=False):
    # Decode exactly one data item; trailing bytes are an error. With
    # canonical=True, non-deterministic encodings are refused too.
    d = _Decoder(_view(data), canonical)
    value = d.item(0)
    if d.pos != len(data):
        raise CborError("trailing bytes after data item")
    return value


def split_array(data, max_items=_MAX_ITEMS):
    # The raw encoded bytes of each element of a top-level array, without
    # decoding them into objects: lets a receiver keep each signed item's exact
    # bytes.
    d = _Decoder(_view(data), True)
    ib = d._take(1)[0]
    if ib >> 5 != 4:
        raise CborError("expected an array")
    n = d._arg(ib & 0x1F)
    if n > max_items or n > len(data):
        raise CborError("array too long")
    parts = []
    for _ in range(n):
        start = d.pos
        d.item(1)
        parts.append(bytes(d.data[start : d.pos]))
    if d.pos != len(data):
        raise CborError("trailing bytes after array")
    return parts


def array_head(n):
    # Head of a definite-length array of n items (to concatenate pre-encoded
    # items without re-encoding them).
    return _head(4, n)

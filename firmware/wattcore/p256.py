# P-256 (secp256r1) ECDSA signing with SHA-256 and RFC 6979 deterministic nonces,
# pure Python for MicroPython (ESP32 meters) and CPython (host tools). Verification
# is the gateway's job (cryptography); only key derivation and signing live here.
#
# Signatures are raw r || s, 32 bytes each, big-endian (COSE ES256). s is NOT
# normalised to low-s, so the output equals python-ecdsa's sign_deterministic
# with sigencode_string, byte for byte.
#
# Points are Jacobian tuples (X, Y, Z) for the affine point (X/Z^2, Y/Z^3); Z == 0
# is the point at infinity. The curve has a = -3, which the doubling uses.
#
# Two ways to compute k*G:
#   "plain": left-to-right double-and-add over the 256 bits of k
#            (256 doublings + 256 additions).
#   "table": fixed-base comb of width 8. k's 256 bits are read as 8 rows of 32 bits,
#            row i holding bits 32i..32i+31. Column j (bit j of every row) gives an
#            index idx_j = sum_i bit(32i + j) << i, and
#                k*G = sum_j 2^j * T[idx_j],  T[idx] = sum_{i in idx} 2^(32i) * G,
#            evaluated Horner-style from j = 31 down to 0 (32 doublings + 32
#            additions). T[1..255] is precomputed in wattcore.p256_table as one bytes
#            constant (affine x || y, 64 bytes per point), which can stay in flash
#            when the module is frozen or run from ROMFS.
# Both loops are uniform: every step does one doubling and one addition; a zero bit
# (or zero column) still adds, into a result that is then discarded. The accumulator
# starts at a fixed point START instead of at infinity (and START's multiple is
# subtracted at the end), so leading zero bits of the nonce take no shortcut through
# the "add to infinity" branch. The exceptional branches of the addition (equal or
# opposite points) stay for correctness but only trigger for a negligible set of
# scalars. Python big-int arithmetic is not constant-time, so this removes the
# key-dependent operation count, not every timing difference.
from hashlib import sha256

from wattcore.const import const
from wattcore.hmac_sha256 import hmac_sha256

# Field prime p, curve y^2 = x^3 - 3x + B, group order N, generator (GX, GY).
P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)
A = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC)
B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)
N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)
GX = const(0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296)
GY = const(0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)

# Comb shape (the table generator tools/gen_p256_table.py uses the same numbers).
COMB_ROWS = const(8)
COMB_COLUMNS = const(32)

_INFINITY = (1, 1, 0)  # doubling maps it to itself
_MAX_KEY_DRAWS = const(64)  # a working RNG is rejected with probability ~2^-32 per draw


def point_double(pt):
    # 2 * pt in Jacobian coordinates, a = -3 (dbl-2001-b, Z3 = 2*Y*Z).
    X, Y, Z = pt
    p = P
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    Z3 = 2 * Y * Z % p
    return (X3, Y3, Z3)


def point_add_affine(pt, x2, y2):
    # pt + (x2, y2), pt Jacobian, (x2, y2) affine and on the curve (mixed addition).
    X1, Y1, Z1 = pt
    if Z1 == 0:
        return (x2, y2, 1)
    p = P
    z1z1 = Z1 * Z1 % p
    H = x2 * z1z1 % p - X1  # in (-p, p): zero exactly when the x coordinates match
    R = y2 * Z1 * z1z1 % p - Y1
    if H == 0:
        if R == 0:
            return point_double(pt)
        return _INFINITY
    HH = H * H % p
    HHH = H * HH % p
    V = X1 * HH % p
    X3 = (R * R - HHH - 2 * V) % p
    Y3 = (R * (V - X3) - Y1 * HHH) % p
    Z3 = Z1 * H % p
    return (X3, Y3, Z3)


def to_affine(pt):
    # Jacobian -> affine (x, y); the inverse is pow(Z, p - 2, p) (Fermat).
    X, Y, Z = pt
    if Z % P == 0:
        raise ValueError("point at infinity has no affine form")
    p = P
    zinv = pow(Z, p - 2, p)
    zinv2 = zinv * zinv % p
    return (X * zinv2 % p, Y * zinv2 * zinv % p)


def _mul_base_plain(k):
    # Imported here so that tools/gen_p256_table.py can import this module (for the
    # curve constants) before the table file exists.
    from wattcore.p256_table import PLAIN_FINISH_X, PLAIN_FINISH_Y, START_X, START_Y

    gx = GX
    gy = GY
    R = (START_X, START_Y, 1)
    for byte in k.to_bytes(32, "big"):
        for shift in range(7, -1, -1):
            R = point_double(R)
            T = point_add_affine(R, gx, gy)
            R = (R, T)[(byte >> shift) & 1]
    # R = k*G + 2^256*START
    return point_add_affine(R, PLAIN_FINISH_X, PLAIN_FINISH_Y)


def _mul_base_table(k):
    from wattcore.p256_table import COMB_FINISH_X, COMB_FINISH_Y, START_X, START_Y, TABLE

    kb = k.to_bytes(32, "big")
    table = memoryview(TABLE)
    from_bytes = int.from_bytes
    R = (START_X, START_Y, 1)
    for j in range(31, -1, -1):
        # Bit 32i + j of k sits in byte 31 - 4i - j // 8, at bit j % 8.
        b = 31 - (j >> 3)
        s = j & 7
        idx = (
            ((kb[b] >> s) & 1)
            | (((kb[b - 4] >> s) & 1) << 1)
            | (((kb[b - 8] >> s) & 1) << 2)
            | (((kb[b - 12] >> s) & 1) << 3)
            | (((kb[b - 16] >> s) & 1) << 4)
            | (((kb[b - 20] >> s) & 1) << 5)
            | (((kb[b - 24] >> s) & 1) << 6)
            | (((kb[b - 28] >> s) & 1) << 7)
        )
        # T[idx] is stored at (idx - 1) * 64; idx 0 reads T[255] as the dummy addend.
        off = ((idx + 254) % 255) << 6
        x2 = from_bytes(table[off : off + 32], "big")
        y2 = from_bytes(table[off + 32 : off + 64], "big")
        R = point_double(R)
        T = point_add_affine(R, x2, y2)
        R = (R, T)[(idx + 255) >> 8]  # 0 for idx 0, else 1
    # R = k*G + 2^32*START
    return point_add_affine(R, COMB_FINISH_X, COMB_FINISH_Y)


def _check_scalar(d, what):
    if not isinstance(d, int) or d < 1 or d >= N:
        raise ValueError(what + " out of range [1, n-1]")


def scalar_mult_base(k, method="table"):
    # k*G as affine (x, y), for k in [1, n-1].
    _check_scalar(k, "scalar")
    if method == "table":
        return to_affine(_mul_base_table(k))
    if method == "plain":
        return to_affine(_mul_base_plain(k))
    raise ValueError("unknown scalar multiplication method %r" % (method,))


def public_key(priv, method="table"):
    # 65-byte uncompressed SEC1 point 04 || x || y.
    _check_scalar(priv, "private key")
    x, y = scalar_mult_base(priv, method)
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def private_key_from_random(random_bytes_fn):
    # random_bytes_fn(32) -> 32 random bytes (os.urandom, a TRNG port, ...).
    # Rejection sampling: candidates outside [1, n-1] are drawn again.
    for _ in range(_MAX_KEY_DRAWS):
        candidate = random_bytes_fn(32)
        if len(candidate) != 32:
            raise ValueError("random source returned %d bytes, wanted 32" % len(candidate))
        d = int.from_bytes(candidate, "big")
        if 1 <= d < N:
            return d
    raise ValueError("random source gave no value in [1, n-1] in %d draws" % _MAX_KEY_DRAWS)


def _rfc6979_nonces(priv, h1):
    # RFC 6979 section 3.2 with HMAC-SHA256, qlen = hlen = 256: yields the candidate
    # nonces k in [1, n-1] in order (step h, including the retry after a rejection).
    x = priv.to_bytes(32, "big")
    e = int.from_bytes(h1, "big")
    if e >= N:
        e -= N
    h = e.to_bytes(32, "big")  # bits2octets(h1)
    V = b"\x01" * 32
    K = b"\x00" * 32
    K = hmac_sha256(K, V + b"\x00" + x + h)
    V = hmac_sha256(K, V)
    K = hmac_sha256(K, V + b"\x01" + x + h)
    V = hmac_sha256(K, V)
    while True:
        V = hmac_sha256(K, V)
        k = int.from_bytes(V, "big")
        if 1 <= k < N:
            yield k
        K = hmac_sha256(K, V + b"\x00")
        V = hmac_sha256(K, V)


def _check_digest(digest):
    if len(digest) != 32:
        raise ValueError("digest must be 32 bytes (SHA-256), got %d" % len(digest))


def rfc6979_k(priv, h1_bytes):
    # The first RFC 6979 nonce for private key priv and SHA-256 digest h1_bytes.
    _check_scalar(priv, "private key")
    _check_digest(h1_bytes)
    return next(_rfc6979_nonces(priv, h1_bytes))


def sign_digest(priv, digest32, method="table"):
    # ECDSA signature r || s (64 bytes) of a SHA-256 digest.
    _check_scalar(priv, "private key")
    _check_digest(digest32)
    if method == "table":
        mul_base = _mul_base_table
    elif method == "plain":
        mul_base = _mul_base_plain
    else:
        raise ValueError("unknown scalar multiplication method %r" % (method,))
    n = N
    e = int.from_bytes(digest32, "big")
    for k in _rfc6979_nonces(priv, digest32):
        r = to_affine(mul_base(k))[0] % n
        if r == 0:
            continue
        s = pow(k, n - 2, n) * (e + r * priv) % n
        if s == 0:
            continue
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign(priv, message_bytes, method="table"):
    # ECDSA-SHA256 signature r || s (64 bytes) of message_bytes.
    return sign_digest(priv, sha256(message_bytes).digest(), method)

# Shared tests of wattcore.p256 and wattcore.hmac_sha256 (CPython and MicroPython VM).
from hashlib import sha256

from support import raises
from wattcore import p256, p256_table
from wattcore.hmac_sha256 import hmac_sha256
from wattcore.p256_table import TABLE


def unhex(s):
    return bytes.fromhex(s)


# RFC 6979 appendix A.2.5 (ECDSA, 256 bits, prime field), SHA-256 cases.
RFC_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
RFC_UX = "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"
RFC_UY = "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"
RFC_VECTORS = (
    (
        b"sample",
        "A6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60",
        "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
        "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8",
    ),
    (
        b"test",
        "D16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0",
        "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367",
        "019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083",
    ),
)

# RFC 4231 HMAC-SHA256 test cases 1-7 (case 5 is truncated to 128 bits).
RFC4231 = (
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (
        b"\x0c" * 20,
        b"Test With Truncation",
        "a3b6167473100ee06e0c796c2955552b",
    ),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data."
        b" The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
)

N = p256.N

# Scalars that exercise the edges of both loops: leading zero bits/columns, single
# table entries, all-zero and all-one columns, n - 1.
EDGE_SCALARS = (
    1,
    2,
    3,
    255,
    1 << 32,
    (1 << 32) + 1,
    1 << 255,
    N - 1,
    N - 2,
    (N - 1) // 2,
    (N + 1) // 2,
    0x0101010101010101010101010101010101010101010101010101010101010101,
)


def derived_key(i):
    # Deterministic test keys in [1, n-1].
    return int.from_bytes(sha256(b"wattshare p256 test key %d" % i).digest(), "big") % (N - 1) + 1


def test_curve_constants():
    p = p256.P
    assert p == (1 << 256) - (1 << 224) + (1 << 192) + (1 << 96) - 1
    assert p256.A == p - 3
    assert (p256.GY * p256.GY - (p256.GX * p256.GX * p256.GX + p256.A * p256.GX + p256.B)) % p == 0
    assert p256.COMB_ROWS * p256.COMB_COLUMNS == 256


def test_rfc6979_nonces():
    for msg, k, _r, _s in RFC_VECTORS:
        assert p256.rfc6979_k(RFC_KEY, sha256(msg).digest()) == int(k, 16)


def test_rfc6979_signatures_both_methods():
    for msg, _k, r, s in RFC_VECTORS:
        expected = unhex(r + s)
        assert p256.sign(RFC_KEY, msg) == expected
        assert p256.sign(RFC_KEY, msg, "table") == expected
        assert p256.sign(RFC_KEY, msg, "plain") == expected
        assert p256.sign_digest(RFC_KEY, sha256(msg).digest()) == expected
        assert p256.sign_digest(RFC_KEY, sha256(msg).digest(), "plain") == expected


def test_public_key_of_rfc_key():
    expected = b"\x04" + unhex(RFC_UX + RFC_UY)
    assert p256.public_key(RFC_KEY) == expected
    assert p256.public_key(RFC_KEY, "plain") == expected
    assert len(expected) == 65


def test_generator_multiples():
    assert p256.scalar_mult_base(1, "plain") == (p256.GX, p256.GY)
    assert p256.scalar_mult_base(1, "table") == (p256.GX, p256.GY)
    # (n - 1) * G = -G
    assert p256.scalar_mult_base(N - 1, "table") == (p256.GX, p256.P - p256.GY)
    assert p256.scalar_mult_base(N - 1, "plain") == (p256.GX, p256.P - p256.GY)


def test_point_addition_special_cases():
    # Mixed addition with the same point (doubling), its negative (infinity) and
    # infinity as the Jacobian operand; G is given with Z = 7 to exercise scaling.
    p = p256.P
    z = 7
    g_jac = (p256.GX * z * z % p, p256.GY * z * z * z % p, z)
    two_g = p256.scalar_mult_base(2, "plain")
    assert p256.to_affine(p256.point_add_affine(g_jac, p256.GX, p256.GY)) == two_g
    assert p256.to_affine(p256.point_double(g_jac)) == two_g
    infinity = p256.point_add_affine(g_jac, p256.GX, p - p256.GY)
    assert infinity[2] % p == 0
    assert p256.point_double(infinity)[2] % p == 0
    assert p256.to_affine(p256.point_add_affine(infinity, p256.GX, p256.GY)) == (p256.GX, p256.GY)
    assert raises(ValueError, p256.to_affine, infinity)


def test_plain_and_table_agree_on_edge_scalars():
    for k in EDGE_SCALARS:
        assert 1 <= k < N
        assert p256.scalar_mult_base(k, "plain") == p256.scalar_mult_base(k, "table"), hex(k)


def test_plain_and_table_give_identical_signatures():
    for i in range(6):
        d = derived_key(i)
        msg = (b"reading %d " % i) * (i + 1)
        sig_table = p256.sign(d, msg, "table")
        assert len(sig_table) == 64
        assert sig_table == p256.sign(d, msg, "plain")
        assert p256.public_key(d, "table") == p256.public_key(d, "plain")


def test_signature_is_deterministic_and_message_bound():
    d = derived_key(100)
    assert p256.sign(d, b"a") == p256.sign(d, b"a")
    assert p256.sign(d, b"a") != p256.sign(d, b"b")
    assert p256.sign(d, b"") == p256.sign_digest(d, sha256(b"").digest())


def test_start_and_finish_points():
    # START is on the curve; 2^32 * START + COMB_FINISH and 2^256 * START + PLAIN_FINISH
    # are the point at infinity (the loops' offsets cancel).
    p = p256.P
    x, y = p256_table.START_X, p256_table.START_Y
    assert (y * y - (x * x * x + p256.A * x + p256.B)) % p == 0
    for doublings, fx, fy in (
        (32, p256_table.COMB_FINISH_X, p256_table.COMB_FINISH_Y),
        (256, p256_table.PLAIN_FINISH_X, p256_table.PLAIN_FINISH_Y),
    ):
        pt = (x, y, 1)
        for _ in range(doublings):
            pt = p256.point_double(pt)
        assert p256.point_add_affine(pt, fx, fy)[2] % p == 0


def test_table_entries():
    # T[idx] = sum over set bits i of idx of 2^(32 i) * G, at offset (idx - 1) * 64.
    assert len(TABLE) == 255 * 64
    for idx in (1, 2, 3, 128, 170, 255):
        scalar = 0
        for i in range(8):
            if (idx >> i) & 1:
                scalar += 1 << (32 * i)
        x, y = p256.scalar_mult_base(scalar, "plain")
        off = (idx - 1) * 64
        assert TABLE[off : off + 64] == x.to_bytes(32, "big") + y.to_bytes(32, "big"), idx


def test_hmac_sha256_rfc4231():
    for key, msg, mac in RFC4231:
        out = hmac_sha256(key, msg)
        assert len(out) == 32
        assert out[: len(mac) // 2] == unhex(mac)


def test_hmac_sha256_accepts_bytearray():
    key, msg, mac = RFC4231[1]
    assert hmac_sha256(bytearray(key), bytearray(msg)) == unhex(mac)


def test_out_of_range_private_keys_rejected():
    digest = sha256(b"x").digest()
    for bad in (0, -1, N, N + 1, 1 << 256, -N):
        assert raises(ValueError, p256.public_key, bad), bad
        assert raises(ValueError, p256.sign, bad, b"x"), bad
        assert raises(ValueError, p256.sign, bad, b"x", "plain"), bad
        assert raises(ValueError, p256.sign_digest, bad, digest), bad
        assert raises(ValueError, p256.rfc6979_k, bad, digest), bad
        assert raises(ValueError, p256.scalar_mult_base, bad), bad
    assert raises(ValueError, p256.public_key, "1")
    assert raises(ValueError, p256.public_key, 1.0)


def test_bad_digest_and_method_rejected():
    assert raises(ValueError, p256.sign_digest, RFC_KEY, b"\x00" * 31)
    assert raises(ValueError, p256.sign_digest, RFC_KEY, b"\x00" * 33)
    assert raises(ValueError, p256.rfc6979_k, RFC_KEY, b"")
    assert raises(ValueError, p256.sign, RFC_KEY, b"x", "fast")
    assert raises(ValueError, p256.public_key, RFC_KEY, "fast")


def test_private_key_from_random_rejection_sampling():
    # Candidates 0, 2^256 - 1 and n are out of range; n - 1 is the first valid one.
    candidates = [b"\x00" * 32, b"\xff" * 32, N.to_bytes(32, "big"), (N - 1).to_bytes(32, "big")]
    asked = []

    def source(n):
        asked.append(n)
        return candidates[len(asked) - 1]

    assert p256.private_key_from_random(source) == N - 1
    assert asked == [32, 32, 32, 32]

    ones = (1).to_bytes(32, "big")
    assert p256.private_key_from_random(lambda n: ones) == 1


def test_private_key_from_random_broken_source():
    # A stuck or short source raises instead of looping forever or truncating.
    assert raises(ValueError, p256.private_key_from_random, lambda n: b"\x00" * n)
    assert raises(ValueError, p256.private_key_from_random, lambda n: b"\x01" * 31)
    assert raises(ValueError, p256.private_key_from_random, lambda n: b"\x01" * 33)

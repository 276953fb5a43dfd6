"""wattcore.p256 / wattcore.hmac_sha256 against independent implementations.

cryptography (OpenSSL) verifies our signatures and derives public keys; python-ecdsa
signs deterministically (RFC 6979) and must give byte-identical r || s; Python's hmac
checks hmac_sha256. The committed comb table must equal a fresh generation.
"""

import hashlib
import hmac
import random

import ecdsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from ecdsa.util import sigencode_string
from hypothesis import given, settings
from hypothesis import strategies as st
from wattcore import p256, p256_table
from wattcore.hmac_sha256 import hmac_sha256

from tools import gen_p256_table

N = p256.N
ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def crypto_public_key(priv):
    return ec.derive_private_key(priv, ec.SECP256R1()).public_key()


def uncompressed(public_key):
    return public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def to_der(sig):
    assert len(sig) == 64
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def verifies(public_key, sig, msg):
    try:
        public_key.verify(to_der(sig), msg, ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True


def ecdsa_signature(priv, msg):
    sk = ecdsa.SigningKey.from_secret_exponent(priv, curve=ecdsa.NIST256p)
    return sk.sign_deterministic(msg, hashfunc=hashlib.sha256, sigencode=sigencode_string)


def random_cases(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        priv = p256.private_key_from_random(rng.randbytes)
        yield priv, rng.randbytes(rng.randrange(0, 300))


def test_curve_constants_match_python_ecdsa():
    curve = ecdsa.NIST256p
    assert curve.curve.p() == p256.P
    assert curve.curve.a() % p256.P == p256.A
    assert curve.curve.b() == p256.B
    assert curve.order == p256.N
    assert (curve.generator.x(), curve.generator.y()) == (p256.GX, p256.GY)


def test_1000_random_signatures_verify_with_cryptography():
    for priv, msg in random_cases(0x5A77, 1000):
        sig = p256.sign(priv, msg, "table")
        public_key = crypto_public_key(priv)
        assert verifies(public_key, sig, msg), (hex(priv), msg.hex())


def test_tampered_signatures_do_not_verify():
    # The verification above must be able to fail.
    for priv, msg in random_cases(0xBAD, 20):
        sig = bytearray(p256.sign(priv, msg))
        public_key = crypto_public_key(priv)
        assert not verifies(public_key, bytes(sig), msg + b"!")
        sig[40] ^= 0x01
        assert not verifies(public_key, bytes(sig), msg)


def test_200_signatures_byte_identical_to_python_ecdsa():
    high_s = 0
    for i, (priv, msg) in enumerate(random_cases(0xEC, 200)):
        ours = p256.sign(priv, msg, "table")
        assert ours == ecdsa_signature(priv, msg), (hex(priv), msg.hex())
        if i < 20:
            assert p256.sign(priv, msg, "plain") == ours
        high_s += int.from_bytes(ours[32:], "big") > N // 2
    # s is not normalised: about half of the signatures have a high s.
    assert high_s > 50


def test_public_keys_match_cryptography():
    for priv, _msg in random_cases(0x9B, 200):
        assert p256.public_key(priv) == uncompressed(crypto_public_key(priv))
    for priv in (1, 2, N - 1, N // 2, 1 << 128):
        expected = uncompressed(crypto_public_key(priv))
        assert p256.public_key(priv, "table") == expected
        assert p256.public_key(priv, "plain") == expected


def test_rfc6979_nonce_matches_python_ecdsa():
    for priv, msg in random_cases(0x6979, 100):
        digest = hashlib.sha256(msg).digest()
        assert p256.rfc6979_k(priv, digest) == ecdsa.rfc6979.generate_k(
            N, priv, hashlib.sha256, digest
        )


def test_digests_at_or_above_the_order_match_python_ecdsa():
    # bits2octets reduces such digests mod n (RFC 6979 section 2.3.4).
    for digest in (b"\xff" * 32, N.to_bytes(32, "big"), (N + 1).to_bytes(32, "big")):
        for priv in (1, 0x1234567, N - 1):
            assert p256.rfc6979_k(priv, digest) == ecdsa.rfc6979.generate_k(
                N, priv, hashlib.sha256, digest
            )
            sk = ecdsa.SigningKey.from_secret_exponent(priv, curve=ecdsa.NIST256p)
            expected = sk.sign_digest_deterministic(
                digest, hashfunc=hashlib.sha256, sigencode=sigencode_string
            )
            assert p256.sign_digest(priv, digest) == expected


def test_rfc6979_retry_nonces_match_python_ecdsa():
    # sign_digest takes the next nonce when r or s is 0 (step h.3); python-ecdsa's
    # retry_gen walks the same sequence.
    for priv, msg in random_cases(0x3, 10):
        digest = hashlib.sha256(msg).digest()
        nonces = p256._rfc6979_nonces(priv, digest)
        for retry in range(3):
            assert next(nonces) == ecdsa.rfc6979.generate_k(
                N, priv, hashlib.sha256, digest, retry_gen=retry
            )


def test_private_key_from_random_matches_rejection_rule():
    rng = random.Random(7)
    for _ in range(200):
        raw = rng.randbytes(32)
        value = int.from_bytes(raw, "big")
        if 1 <= value < N:
            assert p256.private_key_from_random(lambda n, raw=raw: raw) == value


@settings(max_examples=150, deadline=None)
@given(
    priv=st.integers(min_value=1, max_value=N - 1),
    msg=st.binary(max_size=200),
)
def test_property_signatures_verify_and_match_python_ecdsa(priv, msg):
    sig = p256.sign(priv, msg)
    public_key = crypto_public_key(priv)
    assert p256.public_key(priv) == uncompressed(public_key)
    assert verifies(public_key, sig, msg)
    assert sig == ecdsa_signature(priv, msg)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(min_value=1, max_value=N - 1))
def test_property_plain_equals_table(k):
    assert p256.scalar_mult_base(k, "plain") == p256.scalar_mult_base(k, "table")


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), msg=st.binary(max_size=300))
def test_property_hmac_equals_stdlib(key, msg):
    assert hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


def test_hmac_random_inputs_equal_stdlib():
    rng = random.Random(4231)
    for length in list(range(0, 130)) + [200, 1000]:
        key = rng.randbytes(length)
        msg = rng.randbytes(rng.randrange(0, 500))
        assert hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


def test_committed_table_equals_fresh_generation():
    assert gen_p256_table.TABLE_PATH.read_text() == gen_p256_table.render()
    assert p256_table.TABLE == gen_p256_table.table_bytes()


def test_start_and_finish_points_match_cryptography():
    c, comb_finish, plain_finish = gen_p256_table.offset_scalars()
    for scalar, x, y in (
        (c, p256_table.START_X, p256_table.START_Y),
        (comb_finish, p256_table.COMB_FINISH_X, p256_table.COMB_FINISH_Y),
        (plain_finish, p256_table.PLAIN_FINISH_X, p256_table.PLAIN_FINISH_Y),
    ):
        expected = uncompressed(crypto_public_key(scalar))
        assert expected == b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    assert (c << 32) % N == -comb_finish % N
    assert (c << 256) % N == -plain_finish % N


UNIFORMITY_SCALARS = (1, 2, 3, 255, 1 << 32, 1 << 255, (N - 1) // 2, (N + 1) // 2, N - 1)


def test_scalar_loops_are_uniform(monkeypatch):
    # Every step of both loops doubles once and adds once, and no addition takes an
    # exceptional branch (accumulator at infinity, equal or opposite x), even for
    # scalars full of leading zeros: the START offset keeps the accumulator generic.
    calls = {"double": 0, "add": 0}
    real_double, real_add = p256.point_double, p256.point_add_affine

    def double(pt):
        calls["double"] += 1
        return real_double(pt)

    def add(pt, x2, y2):
        calls["add"] += 1
        X, Y, Z = pt
        assert Z % p256.P != 0
        assert X * pow(Z * Z, -1, p256.P) % p256.P != x2
        return real_add(pt, x2, y2)

    monkeypatch.setattr(p256, "point_double", double)
    monkeypatch.setattr(p256, "point_add_affine", add)
    for k in UNIFORMITY_SCALARS:
        for method, steps in (("table", 32), ("plain", 256)):
            calls.update(double=0, add=0)
            result = p256.scalar_mult_base(k, method)
            assert calls == {"double": steps, "add": steps + 1}, (method, hex(k))
            assert b"\x04" + result[0].to_bytes(32, "big") + result[1].to_bytes(
                32, "big"
            ) == uncompressed(crypto_public_key(k))


def test_table_points_match_cryptography():
    table = p256_table.TABLE
    assert len(table) == 255 * 64
    for idx in range(1, 256):
        expected = uncompressed(crypto_public_key(gen_p256_table.comb_scalar(idx)))[1:]
        assert table[(idx - 1) * 64 : idx * 64] == expected, idx

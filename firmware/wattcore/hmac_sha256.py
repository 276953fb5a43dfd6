# HMAC-SHA256 (RFC 2104) on hashlib.sha256, for MicroPython, which has no hmac
# module. Used by the RFC 6979 nonce generator in wattcore.p256.
from hashlib import sha256

from wattcore.const import const

_BLOCK = const(64)
# The pads as 512-bit integers: XOR of one big int is far cheaper in MicroPython
# than a 64-step byte loop.
_IPAD = int.from_bytes(b"\x36" * _BLOCK, "big")
_OPAD = int.from_bytes(b"\x5c" * _BLOCK, "big")


def hmac_sha256(key, msg):
    # key, msg: bytes-like. Returns the 32-byte MAC.
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    # key zero-padded on the right to the block size, as an integer
    k = int.from_bytes(key, "big") << (8 * (_BLOCK - len(key)))
    inner = sha256((k ^ _IPAD).to_bytes(_BLOCK, "big"))
    inner.update(msg)
    outer = sha256((k ^ _OPAD).to_bytes(_BLOCK, "big"))
    outer.update(inner.digest())
    return outer.digest()

# Integrity tag of everything the application persists: the first 4 bytes of
# SHA-256 (hashlib is on every MicroPython port; binascii.crc32 is not).
from hashlib import sha256

TAG_LEN = 4


def tag(data):
    return sha256(data).digest()[:TAG_LEN]


def seal(data):
    # data || tag
    return bytes(data) + tag(data)


def unseal(blob):
    # The data of a sealed blob, or None when it is torn or corrupt.
    if blob is None or len(blob) < TAG_LEN:
        return None
    data = blob[:-TAG_LEN]
    if tag(data) != blob[-TAG_LEN:]:
        return None
    return data

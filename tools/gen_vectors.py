"""Generate docs/vectors/protocol-vectors.json with independent implementations.

The expected bytes come from cbor2 (CBOR), python-ecdsa (RFC 6979 deterministic
ES256), aiocoap (CoAP framing) and Python's hashlib/hmac (enrolment code key and
binding), never from our own cores, so the tests that compare our cores against
this file compare two implementations.

    python -m tools.gen_vectors            # rewrite the file
    python -m tools.gen_vectors --check    # exit 1 if the file is stale
"""

import argparse
import hashlib
import hmac
import json
import sys
import warnings
from pathlib import Path

import cbor2
from aiocoap import CON, POST, Code, Message
from aiocoap.numbers.contentformat import ContentFormat
from ecdsa import NIST256p, SigningKey
from ecdsa.util import sigencode_string

OUT = Path(__file__).resolve().parent.parent / "docs" / "vectors" / "protocol-vectors.json"
# RFC 6979 A.2.5 P-256 private key: public, so anyone can recheck the vectors.
PRIVATE_KEY_HEX = "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"
DEVICE_ID_HEX = "5753a4c138f1e2d0"  # "WS" + a 6-byte hardware id

KEYS = {
    "dev": 1,
    "seq": 2,
    "t": 3,
    "st": 4,
    "ei": 5,
    "ee": 6,
    "p": 7,
    "u": 8,
    "i": 9,
    "f": 10,
    "pf": 11,
    "mdl": 12,
    "sn": 13,
}

READINGS: list[dict] = [
    {
        "name": "producer-exporting",
        "comment": "SDM120CT on a PV roof at noon: exporting 1520 W",
        "fields": {
            "seq": 1048576,
            "t": 1785319200,
            "st": 0,
            "ei": 1834217,
            "ee": 5120033,
            "p": -1520,
            "u": 2334,
            "i": 6650,
            "f": 5001,
            "pf": -987,
            "mdl": 1,
            "sn": 2190471,
        },
    },
    {
        "name": "school-importing",
        "comment": "SDM630CT at the school: importing 11.8 kW, first reading after boot",
        "fields": {
            "seq": 7,
            "t": 1785319210,
            "st": 0x0400,
            "ei": 90412345,
            "ee": 0,
            "p": 11800,
            "u": 2310,
            "i": 17100,
            "f": 4998,
            "pf": 962,
            "mdl": 2,
        },
    },
    {
        "name": "meter-no-reply",
        "comment": "the meter did not answer: a fault reading with no measurement",
        "fields": {"seq": 18446744073709551615, "t": 1785319220, "st": 0x0002, "mdl": 3},
    },
]


# Enrolment (docs/protocol.md section 6): an invite's code, the request bound to it,
# the gateway's answers, and a commissioning record.
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_RANDOM = "7K3MQ9TX2WH"  # the 11 random characters of the example code
ENROL_T = 1785318000
RECORD_TEXT = (
    '{"installer":"A. Fitter","model":"sdm120ct","serial":2190471,"time":1785318060,'
    '"checks":{"modbus":{"ok":true,"polls":10,"retries":0,"crc_errors":0},'
    '"ct_orientation":{"ok":true,"power_w":1520,"site":"consumer"},'
    '"clock":{"ok":true},"first_reading":{"ok":true,"seq":1}}}'
)


def check_char(chars: str) -> str:
    return CROCKFORD[sum((i + 1) * CROCKFORD.index(c) for i, c in enumerate(chars)) % 31]


def payload_bytes(fields: dict) -> bytes:
    m = {KEYS[k]: v for k, v in fields.items()}
    return cbor2.dumps(dict(sorted(m.items())))


def enrolment_vectors(sk, pub: bytes, dev: bytes, protected: bytes) -> dict:
    def sign(payload: bytes, aad: bytes) -> tuple[bytes, bytes, bytes]:
        tbs = cbor2.dumps(["Signature1", protected, aad, payload])
        sig = sk.sign_deterministic(tbs, hashfunc=hashlib.sha256, sigencode=sigencode_string)
        return tbs, sig, cbor2.dumps(cbor2.CBORTag(18, [protected, {4: dev}, payload, sig]))

    code = CODE_RANDOM + check_char(CODE_RANDOM)
    key = hashlib.sha256(b"wattshare enrol code\x00" + code.encode()).digest()
    bind = hmac.new(key, b"wattshare enrol\x00" + dev + pub, hashlib.sha256).digest()
    confirm = hmac.new(key, b"wattshare enrolled\x00" + dev + pub, hashlib.sha256).digest()[:16]
    request = cbor2.dumps({1: dev, 2: pub, 3: bind, 4: ENROL_T, 5: 1, 6: 2190471},
                          canonical=True)
    tbs, sig, cose = sign(request, b"wattshare/e")
    post = Message(mtype=CON, code=POST, mid=0x2001, token=bytes.fromhex("e1e2e3e4"),
                   uri_path=("e",), content_format=ContentFormat(60), payload=cose)
    ok_payload = cbor2.dumps({2: ENROL_T + 1, 6: confirm}, canonical=True)
    ok = Message(mtype=2, code=Code.CHANGED, mid=0x2001, token=bytes.fromhex("e1e2e3e4"),
                 content_format=ContentFormat(60), payload=ok_payload)
    used_payload = cbor2.dumps({2: ENROL_T + 1, 4: "code-used"}, canonical=True)
    used = Message(mtype=2, code=Code.FORBIDDEN, mid=0x2002, token=bytes.fromhex("e1e2e3e5"),
                   content_format=ContentFormat(60), payload=used_payload)
    record = cbor2.dumps({1: dev, 2: pub, 3: ENROL_T + 60, 4: RECORD_TEXT}, canonical=True)
    rec_tbs, rec_sig, rec_cose = sign(record, b"wattshare/c")
    post_record = Message(mtype=CON, code=POST, mid=0x2003, token=bytes.fromhex("c1c2"),
                          uri_path=("c",), content_format=ContentFormat(60),
                          payload=rec_cose)
    return {
        "comment": "device 5753a4c138f1e2d0 (the key above) enrols with the code "
                   f"{code[:4]}-{code[4:8]}-{code[8:]} on an SDM120CT, serial 2190471",
        "code": code,
        "code_key": key.hex(),
        "bind": bind.hex(),
        "confirm": confirm.hex(),
        "request": {
            "fields": {"dev": dev.hex(), "pub": pub.hex(), "bind": bind.hex(), "t": ENROL_T,
                       "mdl": 1, "sn": 2190471},
            "payload": request.hex(),
            "to_be_signed": tbs.hex(),
            "signature": sig.hex(),
            "cose_sign1": cose.hex(),
            "message": post.encode().hex(),
            "message_comment": "CON POST /e, mid 0x2001, token e1e2e3e4, Content-Format 60",
        },
        "enrolled": {"comment": "ACK 2.04 with the confirmation",
                     "payload": ok_payload.hex(), "message": ok.encode().hex()},
        "code_used": {"comment": "ACK 4.03 code-used", "payload": used_payload.hex(),
                      "message": used.encode().hex()},
        "record": {
            "comment": "a commissioning record the device signed (JSON text from the tool)",
            "text": RECORD_TEXT,
            "t": ENROL_T + 60,
            "payload": record.hex(),
            "to_be_signed": rec_tbs.hex(),
            "signature": rec_sig.hex(),
            "cose_sign1": rec_cose.hex(),
            "message": post_record.encode().hex(),
            "message_comment": "CON POST /c, mid 0x2003, token c1c2, Content-Format 60",
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    args = ap.parse_args()

    sk = SigningKey.from_string(bytes.fromhex(PRIVATE_KEY_HEX), curve=NIST256p)
    pub = b"\x04" + sk.get_verifying_key().to_string()
    dev = bytes.fromhex(DEVICE_ID_HEX)
    protected = cbor2.dumps({1: -7})
    vectors = []
    signed = []
    for r in READINGS:
        fields = {"dev": dev, **r["fields"]}
        payload = payload_bytes(fields)
        tbs = cbor2.dumps(["Signature1", protected, b"", payload])
        sig = sk.sign_deterministic(tbs, hashfunc=hashlib.sha256, sigencode=sigencode_string)
        cose = cbor2.dumps(cbor2.CBORTag(18, [protected, {4: dev}, payload, sig]))
        signed.append(cose)
        vectors.append(
            {
                "name": r["name"],
                "comment": r["comment"],
                "fields": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()},
                "payload": payload.hex(),
                "to_be_signed": tbs.hex(),
                "signature": sig.hex(),
                "cose_sign1": cose.hex(),
            }
        )
    # Fixed message ids and tokens are the point of a vector; aiocoap warns
    # that applications should leave them to the library.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    batch = bytes([0x80 | len(signed)]) + b"".join(signed)
    req = Message(
        mtype=CON,
        code=POST,
        mid=0x1234,
        token=bytes.fromhex("a1b2c3d4"),
        uri_path=("r",),
        content_format=ContentFormat(60),
        payload=batch,
    )
    resp_payload = cbor2.dumps({1: 18446744073709551615, 2: 1785319230})
    resp = Message(
        mtype=2,
        code=Code.CHANGED,
        mid=0x1234,
        token=bytes.fromhex("a1b2c3d4"),
        content_format=ContentFormat(60),
        payload=resp_payload,
    )
    reject_payload = cbor2.dumps({2: 1785319230, 3: 7, 4: "bad-signature"})
    reject = Message(
        mtype=2,
        code=Code.UNAUTHORIZED,
        mid=0x1235,
        token=bytes.fromhex("a1b2c3d5"),
        content_format=ContentFormat(60),
        payload=reject_payload,
    )
    time_req = Message(
        mtype=CON, code=Code.GET, mid=0x0001, token=bytes.fromhex("01"), uri_path=("t",)
    )
    enrolment = enrolment_vectors(sk, pub, dev, protected)
    doc = {
        "about": "Wattshare protocol test vectors (docs/protocol.md). Generated by "
        "tools/gen_vectors.py with cbor2, python-ecdsa and aiocoap. Hex strings.",
        "private_key": PRIVATE_KEY_HEX,
        "public_key": pub.hex(),
        "device_id": DEVICE_ID_HEX,
        "protected_header": protected.hex(),
        "readings": vectors,
        "batch": {
            "comment": "all three readings, oldest first, in one CBOR array",
            "payload": batch.hex(),
        },
        "coap": {
            "post_readings": {
                "comment": "CON POST /r, mid 0x1234, token a1b2c3d4, "
                "Content-Format 60, payload = batch",
                "message": req.encode().hex(),
            },
            "changed": {
                "comment": "ACK 2.04: all stored, ack = seq of the last reading of the message",
                "payload": resp_payload.hex(),
                "message": resp.encode().hex(),
            },
            "unauthorized": {
                "comment": "ACK 4.01: reading 7 failed its signature check",
                "payload": reject_payload.hex(),
                "message": reject.encode().hex(),
            },
            "get_time": {"comment": "CON GET /t", "message": time_req.encode().hex()},
        },
        "enrolment": enrolment,
    }
    text = json.dumps(doc, indent=1) + "\n"
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python -m tools.gen_vectors", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

# device.json validation (app.config.check_device): defaults, errors naming the file,
# the key and what is allowed, and the one-time enrolment code (never echoed).
from app.config import check_device
from app.errors import ConfigError
from wattcore import enrolment

METER = {"slave": 1, "ct_rating_A": 100}
CODE = enrolment.code_from_random(lambda n: b"\x33" * n)


def _error(data):
    try:
        check_device(data, METER)
    except ConfigError as e:
        return str(e)
    return None


def test_defaults_and_the_meter_defaults():
    d = check_device({"gateway_host": "gw.local"}, METER)
    assert d["gateway_port"] == 5683 and d["slave"] == 1 and d["ct_rating_A"] == 100
    assert d["enrol_code"] == ""


def test_errors_name_the_file_and_the_key():
    assert _error({}) == "device.json: gateway_host: missing (required)"
    assert _error({"gateway_host": "g", "interval_s": 0}) == \
        "device.json: interval_s: 0 is not in 1..3600"
    assert _error({"gateway_host": "g", "colour": 1}).startswith(
        "device.json: colour: unknown key; allowed keys: ")


def test_the_enrolment_code_is_read_as_a_person_types_it():
    shown = enrolment.format_code(CODE).lower()
    d = check_device({"gateway_host": "g", "enrol_code": shown}, METER)
    assert d["enrol_code"] == CODE


def test_a_mistyped_code_is_refused_without_repeating_it():
    typo = CODE[:3] + ("A" if CODE[3] != "A" else "B") + CODE[4:]
    for bad in (typo, CODE[:-1], CODE + "7"):
        message = _error({"gateway_host": "g", "enrol_code": bad})
        assert message.startswith("device.json: enrol_code: "), message
        assert bad not in message and CODE[:6] not in message
    assert _error({"gateway_host": "g", "enrol_code": 5}) == \
        "device.json: enrol_code: expected the code as text (XXXX-XXXX-XXXX)"

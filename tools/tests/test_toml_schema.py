"""One validator and one error format for every TOML file the project reads: a board, a
meter and gateway.toml each answer a wrong value with `<file>: <key.path> = <value>:
<what is allowed>`, an unknown key and a missing one alike; and no other module parses
TOML on its own."""

import re
from pathlib import Path

import pytest

from gateway import config as gwconfig
from gateway.errors import ConfigError as GatewayConfigError
from tools import toml_schema
from tools.board_config import BOARDS_DIR, METERS_DIR, load_board, load_meter
from tools.errors import ConfigError as ToolsConfigError

REPO = Path(__file__).resolve().parents[2]


def _copy(tmp_path, original, old, new):
    text = original.read_text()
    assert old in text
    path = tmp_path / original.name
    path.write_text(text.replace(old, new, 1))
    return path


def _message(load, path, error):
    with pytest.raises(error) as info:
        load(path)
    return str(info.value)


def _gateway_file(tmp_path, text):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


CASES = [
    # (loader, error class, make the file, expected message after "<file>: ")
    (load_board, ToolsConfigError,
     lambda t: _copy(t, BOARDS_DIR / "esp32-devkitc-max485.toml", "flash_mb = 4", "flash_mb = 3"),
     "flash_mb = 3: must be one of 2, 4, 8, 16, 32"),
    (load_meter, ToolsConfigError,
     lambda t: _copy(t, METERS_DIR / "sdm120ct.toml", "baud = 9600", "baud = 9601"),
     "serial.baud = 9601: must be one of 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200"),
    (gwconfig.load, GatewayConfigError,
     lambda t: _gateway_file(t, "[coap]\nport = 70000\n"),
     "coap.port = 70000: must be an integer 0..65535"),
    (load_meter, ToolsConfigError,
     lambda t: _copy(t, METERS_DIR / "sdm120ct.toml", "phases = 1", "phases = 1\ncolour = 2"),
     "colour: unknown key; allowed keys: "),
    (gwconfig.load, GatewayConfigError,
     lambda t: _gateway_file(t, "[coap]\ncolour = 2\n"),
     "coap.colour: unknown key; allowed keys: "),
    (load_meter, ToolsConfigError,
     lambda t: _copy(t, METERS_DIR / "sdm120ct.toml", 'model = "SDM120CT"', ""),
     "model: missing (required)"),
    (load_board, ToolsConfigError,
     lambda t: _copy(t, BOARDS_DIR / "esp32-devkitc-max485.toml", 'chip = "esp32"', "chip = ["),
     "not valid TOML: "),
    (gwconfig.load, GatewayConfigError, lambda t: _gateway_file(t, "[coap\n"),
     "not valid TOML: "),
]


@pytest.mark.parametrize("load, error, make, expected", CASES)
def test_every_toml_file_answers_in_one_format(tmp_path, load, error, make, expected):
    path = make(tmp_path)
    message = _message(load, path, error)
    assert message.startswith(f"{path}: {expected}"), message


def test_values_are_shown_as_toml_writes_them():
    assert [toml_schema.show(v) for v in ("f64", 7, True, [10, 0], 2.5, {"a": 1})] == [
        '"f64"', "7", "true", "[10, 0]", "2.5", "a table"]
    assert toml_schema.show(0x4A, hex_digits=4) == "0x004A"


def test_only_the_schema_module_parses_toml():
    parsers = []
    for folder in ("gateway", "tools", "bench", "hil_tests"):
        for path in (REPO / folder).rglob("*.py"):
            if "tests" in path.parts:
                continue
            if re.search(r"^\s*(import tomllib|from tomllib)", path.read_text(), re.M):
                parsers.append(str(path.relative_to(REPO)))
    assert parsers == ["tools/toml_schema.py"]

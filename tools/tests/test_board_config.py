"""Board and meter definitions: the shipped files validate, bad files are rejected with a
message naming the file, the key and the allowed values, and the compiled JSON has the
shape the firmware loads."""

import json
from pathlib import Path

import pytest
from wattcore import modbus_rtu

from tools import board_config, toml_schema
from tools.board_config import (
    BOARDS_DIR,
    METERS_DIR,
    compile_board,
    compile_meter,
    get_meter,
    list_boards,
    list_meters,
    load_board,
    load_meter,
)
from tools.errors import ConfigError, ToolsError

SDM120 = METERS_DIR / "sdm120ct.toml"
PZEM = METERS_DIR / "pzem004t-v3.toml"
DEVKITC = BOARDS_DIR / "esp32-devkitc-max485.toml"
S3 = BOARDS_DIR / "esp32-s3-devkitc.toml"


def _variant(tmp_path: Path, original: Path, old: str, new: str, name: str = "") -> Path:
    """A copy of a shipped file with one text replacement (the file keeps its name, so the
    id still matches)."""
    text = original.read_text()
    assert old in text, f"test bug: {old!r} not in {original.name}"
    path = tmp_path / (name or original.name)
    path.write_text(text.replace(old, new, 1))
    return path


def _error(loader, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        loader(path)
    assert isinstance(info.value, ToolsError)
    return str(info.value)


# ---- shipped files -------------------------------------------------------------------


def test_shipped_boards_validate():
    boards = {b.id: b for b in list_boards()}
    assert set(boards) == {"esp32-devkitc-max485", "esp32-s3-devkitc"}
    devkitc = boards["esp32-devkitc-max485"]
    assert devkitc.chip == "esp32"
    assert devkitc.meter_bus.de_re_pin == 4
    assert devkitc.psram is False
    s3 = boards["esp32-s3-devkitc"]
    assert s3.chip == "esp32s3"
    assert s3.meter_bus.de_re_pin is None  # auto-direction transceiver
    assert s3.psram is True


def test_shipped_meters_validate():
    # their model codes and names are checked against docs/protocol.md in test_meter_facts
    meters = {m.id: m for m in list_meters()}
    assert set(meters) == {"sdm120ct", "sdm630ct", "pzem004t-v3"}
    for meter in meters.values():
        for block in meter.blocks:
            assert 1 <= block.count <= modbus_rtu.MAX_READ_COUNT
        for name, field in meter.fields.items():
            assert meter.block_of(field.register, field.width) is not None, name


def test_sdm_reads_everything_in_one_block_of_76_registers():
    for meter_id in ("sdm120ct", "sdm630ct"):
        meter = get_meter(meter_id)
        assert [(b.start, b.count) for b in meter.blocks] == [(0x0000, 76)]
        assert meter.fields["export_Wh"].register == 0x004A  # the last field: 0x4A..0x4B
        assert meter.function == 4


def test_pzem_has_no_export_field():
    meter = get_meter("pzem004t-v3")
    assert [(b.start, b.count) for b in meter.blocks] == [(0, 10)]
    assert "export_Wh" not in meter.fields
    assert "no export" in meter.notes.lower()


def test_every_decoder_kind_has_a_register_width():
    # the validator offers exactly the kinds the firmware's decoder understands
    assert set(board_config.KIND_WIDTH) == set(modbus_rtu.KINDS)


# ---- compiled form -------------------------------------------------------------------


def test_compile_sdm120ct():
    assert compile_meter(load_meter(SDM120)) == {
        "id": "sdm120ct",
        "model": 1,
        "phases": 1,
        "baud": 9600,
        "parity": "N",
        "stop_bits": 1,
        "slave": 1,
        "function": 4,
        "blocks": [[0, 76]],
        "ct_rating_A": 100,
        "fields": {
            "voltage_dV": [0, 0x00 * 2, "f32", 10, 1],
            "current_mA": [0, 0x06 * 2, "f32", 1000, 1],
            "power_W": [0, 0x0C * 2, "f32", 1, 1],
            "frequency_cHz": [0, 0x46 * 2, "f32", 100, 1],
            "power_factor_milli": [0, 0x1E * 2, "f32", 1000, 1],
            "import_Wh": [0, 0x48 * 2, "f32", 1000, 1],
            "export_Wh": [0, 0x4A * 2, "f32", 1000, 1],
        },
        "serial_number": [3, 0xFC00, "u32be_words"],
    }


def test_serial_number_map(tmp_path):
    path = _variant(tmp_path, SDM120, 'kind = "u32be_words"', 'kind = "f32"')
    assert _error(load_meter, path) == (
        f'{path}: serial_number.kind = "f32": must be one of u16, u32be_words, u32le_words')
    path = _variant(tmp_path, SDM120, "function = 3", "function = 6")
    assert _error(load_meter, path) == f"{path}: serial_number.function = 6: must be one of 3, 4"


def test_compile_pzem():
    compiled = compile_meter(load_meter(PZEM))
    assert compiled["model"] == 3
    assert "serial_number" not in compiled  # the PZEM has none
    assert compiled["blocks"] == [[0, 10]]
    assert compiled["fields"] == {
        "voltage_dV": [0, 0, "u16", 1, 1],
        "current_mA": [0, 2, "u32le_words", 1, 1],
        "power_W": [0, 6, "u32le_words", 1, 10],
        "frequency_cHz": [0, 14, "u16", 10, 1],
        "power_factor_milli": [0, 16, "u16", 10, 1],
        "import_Wh": [0, 10, "u32le_words", 1, 1],
        "alarm": [0, 18, "u16", 1, 1],
    }


def test_compile_sdm630ct_uses_totals_for_power():
    fields = compile_meter(get_meter("sdm630ct"))["fields"]
    assert fields["power_W"][1] == 0x0034 * 2
    assert fields["power_factor_milli"][1] == 0x003E * 2


def test_compiled_output_is_plain_json_and_fits_the_block():
    for meter in list_meters():
        compiled = compile_meter(meter)
        assert json.loads(json.dumps(compiled)) == compiled
        for name, (index, offset, kind, num, den) in compiled["fields"].items():
            start, count = compiled["blocks"][index]
            assert offset % 2 == 0 and 0 <= offset, name
            assert offset + 2 * board_config.KIND_WIDTH[kind] <= 2 * count, name
            assert kind in modbus_rtu.KINDS and den >= 1 and num != 0
    for board in list_boards():
        compiled = compile_board(board)
        assert json.loads(json.dumps(compiled)) == compiled


def test_compile_board():
    assert compile_board(load_board(DEVKITC)) == {
        "id": "esp32-devkitc-max485", "chip": "esp32", "uart": 2, "tx": 17, "rx": 16,
        "de_re": 4, "led": 2, "led_kind": "gpio", "flash_mb": 4, "psram": False,
    }
    assert compile_board(load_board(S3))["de_re"] is None


def test_ct_rating_override():
    meter = load_meter(SDM120)
    assert compile_meter(meter, ct_rating_A=50)["ct_rating_A"] == 50
    with pytest.raises(ConfigError, match=r"sdm120ct.toml: ct_rating_A = 0 \(the device's "
                                          r"override\): must be an integer 1..10000"):
        compile_meter(meter, ct_rating_A=0)


# ---- rejected meters -----------------------------------------------------------------


def test_bad_kind_names_file_key_and_allowed_values(tmp_path):
    path = _variant(tmp_path, SDM120, 'kind = "f32"', 'kind = "f64"')
    assert _error(load_meter, path) == (
        f'{path}: fields.voltage_dV.kind = "f64": must be one of '
        "f32, u16, u32be_words, u32le_words")


def test_shipped_path_is_shown_relative_to_the_repository():
    # the same message format for files inside the repository, with a relative path
    with pytest.raises(ConfigError) as info:
        toml_schema.Table({"x": 1}, "boards/meters/sdm120ct.toml", "", ("id",))
    assert str(info.value) == "boards/meters/sdm120ct.toml: x: unknown key; allowed keys: id"
    assert toml_schema.display_path(SDM120) == "boards/meters/sdm120ct.toml"


def test_unknown_top_level_key(tmp_path):
    path = _variant(tmp_path, SDM120, "phases = 1", "phases = 1\ncolour = 'red'")
    message = _error(load_meter, path)
    assert message.startswith(f"{path}: colour: unknown key; allowed keys: ")
    assert "ct_rating_A" in message and "model_code" in message


def test_unknown_field_name(tmp_path):
    path = _variant(tmp_path, SDM120, "[fields.export_Wh]", "[fields.reactive_var]")
    message = _error(load_meter, path)
    assert message.startswith(f"{path}: fields.reactive_var: unknown key; allowed keys: ")
    assert "export_Wh" in message


def test_missing_required_field(tmp_path):
    path = _variant(tmp_path, SDM120, "[fields.power_W]", "[fields.alarm]")
    assert _error(load_meter, path) == (
        f"{path}: fields.power_W: missing (required: power_W, import_Wh)")


def test_field_outside_every_block(tmp_path):
    path = _variant(tmp_path, SDM120, "count = 76", "count = 75")
    assert _error(load_meter, path) == (
        f"{path}: fields.export_Wh.register = 0x004A: 0x004A..0x004B (f32) must lie inside "
        "one block of modbus.blocks (0x0000..0x004A)")


def test_block_larger_than_a_modbus_read(tmp_path):
    path = _variant(tmp_path, SDM120, "count = 76", "count = 126")
    assert _error(load_meter, path) == (
        f"{path}: modbus.blocks[0].count = 126: must be an integer 1..125")


def test_overlapping_blocks(tmp_path):
    path = _variant(tmp_path, PZEM, "blocks = [{ start = 0x0000, count = 10 }]",
                    "blocks = [{ start = 0x0000, count = 10 }, { start = 0x0009, count = 2 }]")
    assert _error(load_meter, path) == (
        f"{path}: modbus.blocks[1].start = 0x0009: 0x0009..0x000A overlaps modbus.blocks[0]")


def test_overlapping_fields(tmp_path):
    path = _variant(tmp_path, PZEM, "register = 0x0003", "register = 0x0002")
    assert _error(load_meter, path) == (
        f"{path}: fields.power_W.register = 0x0002: overlaps fields.current_mA")


def test_bad_serial_settings(tmp_path):
    path = _variant(tmp_path, SDM120, 'parity = "N"', 'parity = "X"')
    assert _error(load_meter, path) == f'{path}: serial.parity = "X": must be one of N, E, O'
    path = _variant(tmp_path, SDM120, "baud = 9600", "baud = 9601")
    assert _error(load_meter, path) == (
        f"{path}: serial.baud = 9601: must be one of "
        "1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200")
    path = _variant(tmp_path, SDM120, "stop_bits = 1", 'stop_bits = "1"')
    assert _error(load_meter, path) == f'{path}: serial.stop_bits = "1": must be one of 1, 2'


def test_bad_types_and_ranges(tmp_path):
    path = _variant(tmp_path, SDM120, "model_code = 1", "model_code = true")
    assert _error(load_meter, path) == f"{path}: model_code = true: must be an integer 1..255"
    path = _variant(tmp_path, SDM120, "model_code = 1", "model_code = 256")
    assert _error(load_meter, path) == f"{path}: model_code = 256: must be an integer 1..255"
    path = _variant(tmp_path, SDM120, 'model = "SDM120CT"', 'model = "sdm 120"')
    assert _error(load_meter, path) == (
        f'{path}: model = "sdm 120": must be a name of capitals, digits and _ (e.g. SDM120CT)')
    path = _variant(tmp_path, SDM120, "default_slave = 1", "default_slave = 248")
    assert _error(load_meter, path) == (
        f"{path}: modbus.default_slave = 248: must be an integer 1..247")
    path = _variant(tmp_path, SDM120, "function = 4", "function = 6")
    assert _error(load_meter, path) == f"{path}: modbus.function = 6: must be one of 3, 4"
    path = _variant(tmp_path, SDM120, "scale = [10, 1]", "scale = [10, 0]")
    assert _error(load_meter, path) == (
        f"{path}: fields.voltage_dV.scale = [10, 0]: den must be in 1..1000000")
    path = _variant(tmp_path, SDM120, "scale = [10, 1]", "scale = 10")
    assert _error(load_meter, path) == (
        f"{path}: fields.voltage_dV.scale = 10: must be [num, den], two integers")
    path = _variant(tmp_path, SDM120, "ct_rating_A = 100", "ct_rating_A = 2.5")
    assert _error(load_meter, path) == f"{path}: ct_rating_A = 2.5: must be an integer 1..10000"


def test_id_must_match_the_file_name(tmp_path):
    path = _variant(tmp_path, SDM120, "", "", name="sdm120.toml")
    assert _error(load_meter, path) == (
        f'{path}: id = "sdm120ct": must match the file name ("sdm120")')


def test_duplicate_model_codes(tmp_path):
    (tmp_path / "sdm120ct.toml").write_text(SDM120.read_text())
    _variant(tmp_path, SDM120, 'id = "sdm120ct"', 'id = "sdm120ct-copy"',
             name="sdm120ct-copy.toml")
    with pytest.raises(ConfigError) as info:
        list_meters(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'sdm120ct.toml'}: model_code = 1: already used by "
        f"{tmp_path / 'sdm120ct-copy.toml'}")
    # a new code but the same registry name
    copy = tmp_path / "sdm120ct-copy.toml"
    copy.write_text(copy.read_text().replace("model_code = 1", "model_code = 9"))
    with pytest.raises(ConfigError) as info:
        list_meters(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'sdm120ct.toml'}: model = \"SDM120CT\": already used by "
        f"{tmp_path / 'sdm120ct-copy.toml'}")


def test_not_toml(tmp_path):
    path = tmp_path / "sdm120ct.toml"
    path.write_text("id = \n")
    message = _error(load_meter, path)
    assert message.startswith(f"{path}: not valid TOML: ") and "line 1" in message
    assert _error(load_meter, tmp_path / "absent.toml") == (
        f"{tmp_path / 'absent.toml'}: no such file")


def test_unknown_meter_id_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        get_meter("sdm72")
    assert str(info.value) == "meter 'sdm72': unknown; one of pzem004t-v3, sdm120ct, sdm630ct"


# ---- rejected boards -----------------------------------------------------------------


def test_bad_chip(tmp_path):
    path = _variant(tmp_path, DEVKITC, 'chip = "esp32"', 'chip = "esp8266"')
    assert _error(load_board, path) == f'{path}: chip = "esp8266": must be one of esp32, esp32s3'


def test_reserved_and_missing_pins(tmp_path):
    path = _variant(tmp_path, DEVKITC, "tx_pin = 17", "tx_pin = 6")
    assert _error(load_board, path) == (
        f"{path}: meter_bus.tx_pin = 6: GPIO6 is reserved on esp32 (SPI flash)")
    path = _variant(tmp_path, DEVKITC, "tx_pin = 17", "tx_pin = 24")
    assert _error(load_board, path) == (
        f"{path}: meter_bus.tx_pin = 24: must be a GPIO of esp32 (0-19, 21-23, 25-27, 32-39)")
    path = _variant(tmp_path, DEVKITC, "de_re_pin = 4", "de_re_pin = 35")
    assert _error(load_board, path) == (
        f"{path}: meter_bus.de_re_pin = 35: GPIO35 is input-only on esp32; this pin must drive "
        "an output")
    # an input-only pin is fine for RX
    path = _variant(tmp_path, DEVKITC, "rx_pin = 16", "rx_pin = 35")
    assert load_board(path).meter_bus.rx_pin == 35
    # octal PSRAM pins on the S3 module
    path = _variant(tmp_path, S3, "rx_pin = 18", "rx_pin = 35")
    assert _error(load_board, path) == (
        f"{path}: meter_bus.rx_pin = 35: GPIO35 is reserved on esp32s3 (octal PSRAM)")


def test_pin_used_twice(tmp_path):
    path = _variant(tmp_path, DEVKITC, "pin = 2", "pin = 4")
    assert _error(load_board, path) == (
        f"{path}: status_led.pin = 4: GPIO4 is already used by meter_bus.de_re_pin")


def test_de_re_pin_none_or_a_gpio(tmp_path):
    path = _variant(tmp_path, DEVKITC, "de_re_pin = 4", 'de_re_pin = "auto"')
    assert _error(load_board, path) == (
        f'{path}: meter_bus.de_re_pin = "auto": must be a GPIO number or "none" '
        "(auto-direction transceiver)")
    path = _variant(tmp_path, DEVKITC, "de_re_pin = 4", 'de_re_pin = "none"')
    assert load_board(path).meter_bus.de_re_pin is None


def test_uart0_is_refused(tmp_path):
    path = _variant(tmp_path, DEVKITC, "uart = 2", "uart = 0")
    assert _error(load_board, path) == (
        f"{path}: meter_bus.uart = 0: must be one of 1, 2 (UART0 is the esp32 console)")


def test_board_unknown_key_and_bad_types(tmp_path):
    path = _variant(tmp_path, DEVKITC, "kind = \"gpio\"", "kind = \"gpio\"\nactive_low = true")
    assert _error(load_board, path) == (
        f"{path}: status_led.active_low: unknown key; allowed keys: kind, pin")
    path = _variant(tmp_path, DEVKITC, "psram = false", 'psram = "no"')
    assert _error(load_board, path) == f'{path}: psram = "no": must be true or false'
    path = _variant(tmp_path, DEVKITC, "flash_mb = 4", "flash_mb = 3")
    assert _error(load_board, path) == f"{path}: flash_mb = 3: must be one of 2, 4, 8, 16, 32"
    path = _variant(tmp_path, DEVKITC, 'kind = "gpio"', 'kind = "neopixel"')
    assert _error(load_board, path) == (
        f'{path}: status_led.kind = "neopixel": must be one of gpio, ws2812')


def test_board_cli_validates_everything(capsys):
    assert board_config.main([]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 boards")
    assert board_config.main(["--json"]) == 0
    compiled = json.loads(capsys.readouterr().out)
    assert compiled["meters"]["sdm120ct"]["model"] == 1


def test_flash_offset_and_baud_per_chip(tmp_path):
    assert load_board(DEVKITC).flashing == board_config.Flashing(offset=0x1000, baud=460800)
    assert load_board(S3).flashing.offset == 0
    path = _variant(tmp_path, DEVKITC, "offset = 0x1000", "offset = 0x0")
    assert _error(load_board, path) == (
        f"{path}: flash.offset = 0x0000: must be 0x1000, where a MicroPython image for esp32 "
        "goes")
    path = _variant(tmp_path, S3, "baud = 460800", "baud = 9600")
    assert "flash.baud = 9600: must be one of 115200, 230400, 460800, 921600" in _error(
        load_board, path)


def test_pinned_images_come_from_micropython_org(tmp_path):
    path = tmp_path / "images.toml"
    path.write_text(board_config.IMAGES_FILE.read_text().replace(
        "https://micropython.org/resources", "https://example.com/resources"))
    with pytest.raises(ConfigError, match=r"image\[0\].url = .*: must be on https://micropython"):
        board_config.load_images(path)
    path.write_text(board_config.IMAGES_FILE.read_text().replace('chip = "esp32"',
                                                                 'chip = "esp8266"'))
    with pytest.raises(ConfigError, match=r'image\[0\].chip = "esp8266": must be one of'):
        board_config.load_images(path)


# ---- per-phase registers, holding registers, general address (the simulator serves them)


SDM630 = METERS_DIR / "sdm630ct.toml"


def test_shipped_meters_map_phases_holding_registers_and_general_address():
    sdm630, sdm120, pzem = (get_meter(m) for m in ("sdm630ct", "sdm120ct", "pzem004t-v3"))
    assert set(sdm630.per_phase) == {"voltage_dV", "current_mA", "power_W"}
    for name in ("voltage_dV", "current_mA"):  # the reading's field is phase L1
        assert sdm630.per_phase[name].field(0) == sdm630.fields[name]
    assert not sdm120.per_phase and not pzem.per_phase
    assert all("slave_address" in m.holding for m in (sdm630, sdm120, pzem))
    assert (pzem.general_address, sdm120.general_address) == (0xF8, None)
    # none of this changes what the firmware loads
    assert "per_phase" not in compile_meter(sdm630) and "holding" not in compile_meter(pzem)


@pytest.mark.parametrize("old, new, message", [
    ("registers = [0x0000, 0x0002, 0x0004]", "registers = [0x0002, 0x0000, 0x0004]",
     "per_phase.voltage_dV.registers = [2, 0, 4]: 0x0000 (L2) overlaps fields.voltage_dV"),
    ("registers = [0x000C, 0x000E, 0x0010]", "registers = [0x000C, 0x000E]",
     "per_phase.power_W.registers = [12, 14]: must be a list of 3 registers"),
    ("registers = [0x000C, 0x000E, 0x0010]", "registers = [0x000C, 0x000E, 0x0034]",
     "0x0034 (L3) overlaps fields.power_W"),
    ("registers = [0x000C, 0x000E, 0x0010]", "registers = [0x000C, 0x000E, 0x0100]",
     "0x0100 (L3) must lie inside one block of modbus.blocks"),
    ('[holding.slave_address]\nregister = 0x0014\nkind = "f32"',
     '[holding.baud]\nregister = 0x001C\nkind = "f32"',
     "holding.baud: unknown key"),
])
def test_bad_phase_and_holding_maps_are_named(tmp_path, old, new, message):
    path = _variant(tmp_path, SDM630, old, new)
    assert message in _error(load_meter, path)


def test_per_phase_only_on_a_three_phase_meter(tmp_path):
    path = _variant(tmp_path, SDM630, "phases = 3", "phases = 1")
    assert "per_phase = a table: only for a three-phase meter (phases = 3)" in _error(
        load_meter, path)


def test_general_address_is_outside_the_slave_range(tmp_path):
    path = _variant(tmp_path, PZEM, "general_address = 0xF8", "general_address = 0x10")
    assert "modbus.general_address = 0x10: must be an integer 0xF8..0xFF" in _error(
        load_meter, path)

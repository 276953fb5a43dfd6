"""Board and meter definitions: TOML files under ``boards/``, validated, compiled to JSON.

Boards (``boards/*.toml``) say which chip, which UART and pins drive the meter bus and
which pin is the status LED. Meters (``boards/meters/*.toml``) say how to talk to a meter
model (serial settings, Modbus function, the register blocks to read) and where each
reading field sits (register, data kind, exact rational scale to the protocol unit).

Every key is checked (type, range, allowed values); unknown keys are rejected. Any
problem raises :class:`tools.errors.ConfigError` in the one format of every TOML file the
project reads (:mod:`tools.toml_schema`)::

    boards/meters/sdm120ct.toml: fields.voltage_dV.kind = "f64": must be one of f32, u16, ...

MicroPython has no TOML parser, so :func:`compile_meter` and :func:`compile_board` turn
a validated definition into a small plain-JSON structure the firmware loads.

    python -m tools.board_config          # validate every shipped file
    python -m tools.board_config --json   # ... and print the compiled JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from wattcore.modbus_rtu import KINDS, MAX_READ_COUNT

from tools.errors import ConfigError
from tools.toml_schema import REPO_ROOT, Table, display_path, one_of, show
from tools.toml_schema import read as read_toml

BOARDS_DIR = REPO_ROOT / "boards"
METERS_DIR = BOARDS_DIR / "meters"
IMAGES_FILE = BOARDS_DIR / "micropython" / "images.toml"

CHIPS = ("esp32", "esp32s3")
# Where a MicroPython image goes in flash: after the ESP32's second-stage bootloader
# gap at 0x1000; the ESP32-S3 image starts at 0x0 (micropython.org's flashing notes).
IMAGE_OFFSET = {"esp32": 0x1000, "esp32s3": 0x0}
FLASH_BAUDS = (115200, 230400, 460800, 921600)
FLASH_SIZES_MB = (2, 4, 8, 16, 32)
LED_KINDS = ("gpio", "ws2812")
NO_PIN = "none"  # de_re_pin of a board whose transceiver switches direction by itself

BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ("N", "E", "O")
STOP_BITS = (1, 2)
FUNCTIONS = (3, 4)  # read holding / read input registers
PHASES = (1, 3)
MAX_MODEL_CODE = 255  # the reading's mdl field is one byte
MAX_BLOCKS = 8
MAX_CT_RATING_A = 10000
MAX_SCALE_TERM = 1000000

# Reading fields a meter definition may map, in the protocol's units.
FIELD_NAMES = (
    "voltage_dV",  # 0.1 V
    "current_mA",  # mA
    "power_W",  # W, signed: export negative
    "frequency_cHz",  # 0.01 Hz
    "power_factor_milli",  # x1000, signed like the power
    "import_Wh",  # cumulative import, Wh
    "export_Wh",  # cumulative export, Wh (absent: the meter cannot measure export)
    "alarm",  # raw alarm register (PZEM: 0xFFFF = alarm)
)
REQUIRED_FIELDS = ("power_W", "import_Wh")
COUNTER_FIELDS = ("import_Wh", "export_Wh")
# What a three-phase meter reports for each phase (``per_phase``), in the fields' units;
# the first phase's voltage and current are the reading's fields.
PHASE_FIELD_NAMES = ("voltage_dV", "current_mA", "power_W")
# Configuration registers a meter answers with function 03 (``holding``), besides its
# serial number. Values come from the meter's state (its slave address).
HOLDING_NAMES = ("slave_address",)
GENERAL_ADDRESSES = (0xF8, 0xFF)  # lo, hi: outside the 1..247 slave range

# Registers (16-bit words) each data kind occupies; the kinds are those the firmware's
# decoder (wattcore.modbus_rtu.decode_value) understands.
KIND_WIDTH = {"f32": 2, "u16": 1, "u32le_words": 2, "u32be_words": 2}
SIGNED_KINDS = ("f32",)


@dataclass(frozen=True)
class _Gpio:
    pins: frozenset
    reserved: dict  # pin -> why
    psram_reserved: dict  # pin -> why, only when the module has PSRAM
    input_only: frozenset
    uarts: tuple  # UARTs free for the meter bus (UART0 is the REPL console)
    pin_ranges: str


def _span(a, b):
    return range(a, b + 1)


_CHIP_GPIO = {
    "esp32": _Gpio(
        pins=frozenset([*_span(0, 19), *_span(21, 23), *_span(25, 27), *_span(32, 39)]),
        reserved={1: "UART0 TX (console)", 3: "UART0 RX (console)"}
        | {p: "SPI flash" for p in _span(6, 11)},
        psram_reserved={16: "PSRAM", 17: "PSRAM"},
        input_only=frozenset(_span(34, 39)),
        uarts=(1, 2),
        pin_ranges="0-19, 21-23, 25-27, 32-39",
    ),
    "esp32s3": _Gpio(
        pins=frozenset([*_span(0, 21), *_span(26, 48)]),
        reserved={19: "native USB D-", 20: "native USB D+", 43: "UART0 TX (console)",
                  44: "UART0 RX (console)"}
        | {p: "SPI flash/PSRAM" for p in _span(26, 32)},
        psram_reserved={p: "octal PSRAM" for p in _span(33, 37)},
        input_only=frozenset(),
        uarts=(1, 2),
        pin_ranges="0-21, 26-48",
    ),
}


@dataclass(frozen=True)
class MeterBus:
    """UART and pins of the meter bus; ``de_re_pin`` None = auto-direction transceiver."""

    uart: int
    tx_pin: int
    rx_pin: int
    de_re_pin: int | None


@dataclass(frozen=True)
class StatusLed:
    pin: int
    kind: str  # one of LED_KINDS


@dataclass(frozen=True)
class Flashing:
    """How esptool writes MicroPython to the board: image offset and serial baud rate."""

    offset: int
    baud: int


@dataclass(frozen=True)
class Board:
    id: str
    name: str
    chip: str
    flash_mb: int
    psram: bool
    notes: str
    meter_bus: MeterBus
    status_led: StatusLed
    flashing: Flashing
    path: Path


@dataclass(frozen=True)
class SerialSettings:
    """Serial line settings; Modbus RTU always uses 8 data bits."""

    baud: int
    parity: str  # one of PARITIES
    stop_bits: int


@dataclass(frozen=True)
class Block:
    """Registers read in one request: ``count`` registers from ``start``."""

    start: int
    count: int

    @property
    def end(self) -> int:
        """One past the last register of the block."""
        return self.start + self.count


@dataclass(frozen=True)
class FieldMap:
    """Where a reading field sits: protocol value = register value * num / den."""

    register: int
    kind: str
    num: int
    den: int

    @property
    def width(self) -> int:
        """Number of 16-bit registers the value occupies."""
        return KIND_WIDTH[self.kind]


@dataclass(frozen=True)
class SerialNumberMap:
    """Where the meter keeps its serial number: an integer read with ``function``."""

    function: int
    register: int
    kind: str  # an integer kind: u16, u32be_words, u32le_words

    @property
    def width(self) -> int:
        return KIND_WIDTH[self.kind]


@dataclass(frozen=True)
class PhaseMap:
    """Where each phase's value of one quantity sits: ``registers[k]`` is phase L(k+1);
    protocol value = register value * num / den."""

    registers: tuple[int, ...]
    kind: str
    num: int
    den: int

    def field(self, phase: int) -> FieldMap:
        return FieldMap(register=self.registers[phase], kind=self.kind, num=self.num,
                        den=self.den)


@dataclass(frozen=True)
class HoldingMap:
    """A configuration register, read with function 03."""

    register: int
    kind: str

    @property
    def width(self) -> int:
        return KIND_WIDTH[self.kind]


@dataclass(frozen=True)
class Meter:
    id: str
    name: str
    model_code: int
    model: str  # the name in the gateway's registry (SDM120CT)
    phases: int
    ct_rating_A: int
    notes: str
    serial: SerialSettings
    default_slave: int
    function: int
    blocks: tuple[Block, ...]
    fields: dict[str, FieldMap]
    path: Path
    serial_number: SerialNumberMap | None = None  # None: the meter has none to read
    general_address: int | None = None  # also answered, on a one-meter link (PZEM 0xF8)
    holding: dict[str, HoldingMap] = field(default_factory=dict)
    per_phase: dict[str, PhaseMap] = field(default_factory=dict)  # three-phase meters

    def block_of(self, register: int, width: int = 1) -> int | None:
        """Index of the block holding ``width`` registers from ``register``, or None."""
        for index, block in enumerate(self.blocks):
            if block.start <= register and register + width <= block.end:
                return index
        return None


# ---- schema reading ------------------------------------------------------------------


def _check_id(top: Table, path: Path) -> str:
    ident = top.text("id", 48)
    if ident != path.stem:
        top.fail("id", f"must match the file name ({show(path.stem)})")
    return ident


# ---- boards --------------------------------------------------------------------------


def _pin(table: Table, key: str, chip: str, psram: bool, output: bool) -> int:
    gpio = _CHIP_GPIO[chip]
    value = table.raw(key)
    if not isinstance(value, int) or isinstance(value, bool) or value not in gpio.pins:
        table.fail(key, f"must be a GPIO of {chip} ({gpio.pin_ranges})")
    why = gpio.reserved.get(value) or (gpio.psram_reserved.get(value) if psram else None)
    if why:
        table.fail(key, f"GPIO{value} is reserved on {chip} ({why})")
    if output and value in gpio.input_only:
        table.fail(key, f"GPIO{value} is input-only on {chip}; this pin must drive an output")
    return value


def load_board(path) -> Board:
    """Load and validate a board file; raise ConfigError naming file, key and allowed values."""
    path = Path(path)
    data, where = read_toml(path)
    top = Table(data, where, "", ("id", "name", "chip", "flash_mb", "psram", "notes",
                                   "meter_bus", "status_led", "flash"))
    ident = _check_id(top, path)
    name = top.text("name", 80)
    chip = top.choice("chip", CHIPS)
    flash_mb = top.choice("flash_mb", FLASH_SIZES_MB)
    psram = top.flag("psram")
    notes = top.text("notes", 4000, default="")
    gpio = _CHIP_GPIO[chip]

    bus = top.table("meter_bus", ("uart", "tx_pin", "rx_pin", "de_re_pin"))
    uart = bus.raw("uart")
    if not isinstance(uart, int) or isinstance(uart, bool) or uart not in gpio.uarts:
        bus.fail("uart", f"must be one of {one_of(gpio.uarts)} (UART0 is the {chip} console)")
    tx_pin = _pin(bus, "tx_pin", chip, psram, output=True)
    rx_pin = _pin(bus, "rx_pin", chip, psram, output=False)
    if bus.raw("de_re_pin") == NO_PIN:
        de_re_pin = None
    elif isinstance(bus.raw("de_re_pin"), str):
        bus.fail("de_re_pin", f"must be a GPIO number or {show(NO_PIN)} (auto-direction "
                              "transceiver)")
    else:
        de_re_pin = _pin(bus, "de_re_pin", chip, psram, output=True)

    led = top.table("status_led", ("pin", "kind"))
    led_pin = _pin(led, "pin", chip, psram, output=True)
    led_kind = led.choice("kind", LED_KINDS)

    flash = top.table("flash", ("offset", "baud"))
    offset = flash.integer("offset", 0, 0x10000, hex_digits=4)
    if offset != IMAGE_OFFSET[chip]:
        flash.fail("offset", f"must be 0x{IMAGE_OFFSET[chip]:04X}, where a MicroPython image "
                             f"for {chip} goes", hex_digits=4)
    baud = flash.choice("baud", FLASH_BAUDS)

    used: dict[int, str] = {}
    for key, pin in (("meter_bus.tx_pin", tx_pin), ("meter_bus.rx_pin", rx_pin),
                     ("meter_bus.de_re_pin", de_re_pin), ("status_led.pin", led_pin)):
        if pin is None:
            continue
        if pin in used:
            raise ConfigError(f"{where}: {key} = {pin}: GPIO{pin} is already used by "
                              f"{used[pin]}")
        used[pin] = key

    return Board(
        id=ident, name=name, chip=chip, flash_mb=flash_mb, psram=psram, notes=notes.strip(),
        meter_bus=MeterBus(uart=uart, tx_pin=tx_pin, rx_pin=rx_pin, de_re_pin=de_re_pin),
        status_led=StatusLed(pin=led_pin, kind=led_kind),
        flashing=Flashing(offset=offset, baud=baud), path=path,
    )


# ---- meters --------------------------------------------------------------------------


def _blocks(modbus: Table) -> tuple[Block, ...]:
    raw = modbus.raw("blocks")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BLOCKS:
        modbus.fail("blocks", f"must be a list of 1..{MAX_BLOCKS} tables "
                              "{ start = ..., count = ... }")
    blocks: list[Block] = []
    for index, item in enumerate(raw):
        key = f"blocks[{index}]"
        if not isinstance(item, dict):
            modbus.fail(key, "must be a table { start = ..., count = ... }", value=item)
        block = Table(item, modbus.where, modbus.path(key), ("start", "count"))
        start = block.integer("start", 0, 0xFFFF, hex_digits=4)
        count = block.integer("count", 1, MAX_READ_COUNT)
        if start + count > 0x10000:
            block.fail("count", f"{count} registers from 0x{start:04X} must end by 0xFFFF")
        for other_index, other in enumerate(blocks):
            if start < other.end and other.start < start + count:
                block.fail("start", f"0x{start:04X}..0x{start + count - 1:04X} overlaps "
                                    f"{modbus.path(f'blocks[{other_index}]')}", hex_digits=4)
        blocks.append(Block(start, count))
    return tuple(blocks)


def _scale(field: Table) -> tuple[int, int]:
    raw = field.raw("scale")
    ok = (isinstance(raw, list) and len(raw) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in raw))
    if not ok:
        field.fail("scale", "must be [num, den], two integers")
    num, den = raw
    if num == 0 or abs(num) > MAX_SCALE_TERM:
        field.fail("scale", f"num must be in -{MAX_SCALE_TERM}..{MAX_SCALE_TERM} and not 0")
    if not 1 <= den <= MAX_SCALE_TERM:
        field.fail("scale", f"den must be in 1..{MAX_SCALE_TERM}")
    return num, den


def _fields(top: Table, blocks: tuple[Block, ...]) -> dict[str, FieldMap]:
    table = top.table("fields", FIELD_NAMES)
    fields: dict[str, FieldMap] = {}
    for name in FIELD_NAMES:
        if not table.has(name):
            if name in REQUIRED_FIELDS:
                table.fail(name, f"missing (required: {one_of(REQUIRED_FIELDS)})")
            continue
        field = table.table(name, ("register", "kind", "scale"))
        register = field.integer("register", 0, 0xFFFF, hex_digits=4)
        kind = field.choice("kind", tuple(sorted(KINDS)))
        num, den = _scale(field)
        if name in COUNTER_FIELDS and kind not in SIGNED_KINDS and num < 0:
            field.fail("scale", "an energy counter needs a positive scale")
        width = KIND_WIDTH[kind]
        last = register + width - 1
        if not any(b.start <= register and last < b.end for b in blocks):
            spans = ", ".join(f"0x{b.start:04X}..0x{b.end - 1:04X}" for b in blocks)
            field.fail("register", f"0x{register:04X}..0x{last:04X} ({kind}) must lie inside "
                                   f"one block of modbus.blocks ({spans})", hex_digits=4)
        for other_name, other in fields.items():
            if register <= other.register + other.width - 1 and other.register <= last:
                field.fail("register", f"overlaps fields.{other_name}", hex_digits=4)
        fields[name] = FieldMap(register=register, kind=kind, num=num, den=den)
    return fields


def _per_phase(top: Table, phases: int, blocks: tuple[Block, ...],
               fields: dict[str, FieldMap]) -> dict[str, PhaseMap]:
    if not top.has("per_phase"):
        return {}
    if phases == 1:
        top.fail("per_phase", "only for a three-phase meter (phases = 3)")
    table = top.table("per_phase", PHASE_FIELD_NAMES)
    out: dict[str, PhaseMap] = {}
    used: dict[int, str] = {}  # register -> what sits there
    for name in PHASE_FIELD_NAMES:
        if not table.has(name):
            continue
        entry = table.table(name, ("registers", "kind", "scale"))
        raw = entry.raw("registers")
        if (not isinstance(raw, list) or len(raw) != phases
                or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= 0xFFFF
                           for r in raw)):
            entry.fail("registers", f"must be a list of {phases} registers 0x0000..0xFFFF, "
                                    "one per phase (L1 first)")
        kind = entry.choice("kind", tuple(sorted(KINDS)))
        num, den = _scale(entry)
        pmap = PhaseMap(registers=tuple(raw), kind=kind, num=num, den=den)
        for phase, register in enumerate(pmap.registers):
            one = pmap.field(phase)
            last = register + one.width - 1
            what = f"per_phase.{name}.registers[{phase}]"
            if not any(b.start <= register and last < b.end for b in blocks):
                entry.fail("registers", f"0x{register:04X} (L{phase + 1}) must lie inside one "
                                        "block of modbus.blocks", value=raw)
            for other_name, other in fields.items():
                if register <= other.register + other.width - 1 and other.register <= last:
                    if phase == 0 and other_name == name and other == one:
                        continue  # the reading's field is this phase's (L1) value
                    entry.fail("registers", f"0x{register:04X} (L{phase + 1}) overlaps "
                                            f"fields.{other_name}", value=raw)
            for r in range(register, last + 1):
                if r in used:
                    entry.fail("registers", f"0x{register:04X} (L{phase + 1}) overlaps "
                                            f"{used[r]}", value=raw)
                used[r] = what
        out[name] = pmap
    return out


def _holding(top: Table) -> dict[str, HoldingMap]:
    if not top.has("holding"):
        return {}
    table = top.table("holding", HOLDING_NAMES)
    out: dict[str, HoldingMap] = {}
    for name in HOLDING_NAMES:
        if table.has(name):
            entry = table.table(name, ("register", "kind"))
            out[name] = HoldingMap(register=entry.integer("register", 0, 0xFFFE, hex_digits=4),
                                   kind=entry.choice("kind", tuple(sorted(KINDS))))
    return out


def load_meter(path) -> Meter:
    """Load and validate a meter file; raise ConfigError naming file, key and allowed values."""
    path = Path(path)
    data, where = read_toml(path)
    top = Table(data, where, "", ("id", "name", "model_code", "model", "phases",
                                   "ct_rating_A", "notes", "serial", "modbus", "fields",
                                   "serial_number", "holding", "per_phase"))
    ident = _check_id(top, path)
    name = top.text("name", 80)
    model_code = top.integer("model_code", 1, MAX_MODEL_CODE)
    model = top.text("model", 24)
    if not model or not all(c.isupper() or c.isdigit() or c == "_" for c in model):
        top.fail("model", "must be a name of capitals, digits and _ (e.g. SDM120CT)")
    phases = top.choice("phases", PHASES)
    ct_rating_a = top.integer("ct_rating_A", 1, MAX_CT_RATING_A)
    notes = top.text("notes", 4000, default="")

    serial = top.table("serial", ("baud", "parity", "stop_bits"))
    settings = SerialSettings(
        baud=serial.choice("baud", BAUD_RATES),
        parity=serial.choice("parity", PARITIES),
        stop_bits=serial.choice("stop_bits", STOP_BITS),
    )
    modbus = top.table("modbus", ("default_slave", "general_address", "function", "blocks"))
    default_slave = modbus.integer("default_slave", 1, 247)
    general_address = (modbus.integer("general_address", *GENERAL_ADDRESSES, hex_digits=2)
                       if modbus.has("general_address") else None)
    function = modbus.choice("function", FUNCTIONS)
    blocks = _blocks(modbus)
    fields = _fields(top, blocks)
    serial_number = None
    if top.has("serial_number"):
        sn = top.table("serial_number", ("function", "register", "kind"))
        serial_number = SerialNumberMap(
            function=sn.choice("function", FUNCTIONS),
            register=sn.integer("register", 0, 0xFFFF - 1, hex_digits=4),
            kind=sn.choice("kind", tuple(k for k in sorted(KINDS) if k not in SIGNED_KINDS)))
    return Meter(
        id=ident, name=name, model_code=model_code, model=model, phases=phases,
        ct_rating_A=ct_rating_a,
        notes=notes.strip(), serial=settings, default_slave=default_slave, function=function,
        blocks=blocks, fields=fields, path=path, serial_number=serial_number,
        general_address=general_address, holding=_holding(top),
        per_phase=_per_phase(top, phases, blocks, fields),
    )


# ---- collections ---------------------------------------------------------------------


def list_boards(directory=None) -> list[Board]:
    """Every board file in ``directory`` (default ``boards/``), validated, sorted by id."""
    directory = Path(directory) if directory is not None else BOARDS_DIR
    return [load_board(p) for p in sorted(directory.glob("*.toml"))]


def list_meters(directory=None) -> list[Meter]:
    """Every meter file in ``directory`` (default ``boards/meters/``), validated, sorted by
    id; model codes and model names must be unique."""
    directory = Path(directory) if directory is not None else METERS_DIR
    meters = [load_meter(p) for p in sorted(directory.glob("*.toml"))]
    for key in ("model_code", "model"):
        seen: dict[object, Meter] = {}
        for meter in meters:
            value = getattr(meter, key)
            if value in seen:
                raise ConfigError(f"{display_path(meter.path)}: {key} = {show(value)}: "
                                  f"already used by {display_path(seen[value].path)}")
            seen[value] = meter
    return meters


def get_board(board_id: str, directory=None) -> Board:
    """The board with this id; ConfigError listing the known ids if there is none."""
    boards = list_boards(directory)
    for board in boards:
        if board.id == board_id:
            return board
    raise ConfigError(f"board {board_id!r}: unknown; one of "
                      f"{one_of(b.id for b in boards)}")


def get_meter(meter_id: str, directory=None) -> Meter:
    """The meter with this id; ConfigError listing the known ids if there is none."""
    meters = list_meters(directory)
    for meter in meters:
        if meter.id == meter_id:
            return meter
    raise ConfigError(f"meter {meter_id!r}: unknown; one of "
                      f"{one_of(m.id for m in meters)}")


# ---- MicroPython images ---------------------------------------------------------------


@dataclass(frozen=True)
class PinnedImage:
    """A MicroPython image ``wattshare meter flash`` accepts (boards/micropython/images.toml)."""

    file: str
    chip: str
    micropython: str
    bytes: int
    sha256: str
    page: str
    url: str


def load_images(path=None) -> list[PinnedImage]:
    """The pinned MicroPython images, validated; ConfigError naming file and key."""
    path = Path(path) if path is not None else IMAGES_FILE
    data, where = read_toml(path)
    top = Table(data, where, "", ("image",))
    raw = top.raw("image")
    if not isinstance(raw, list):
        top.fail("image", "must be [[image]] tables")
    images = []
    for index, item in enumerate(raw):
        entry = Table(item, where, f"image[{index}]",
                      ("file", "chip", "micropython", "bytes", "sha256", "page", "url"))
        sha = entry.text("sha256", 64).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            entry.fail("sha256", "must be 64 hex digits")
        page = entry.text("page", 200)
        url = entry.text("url", 300)
        for key, value in (("page", page), ("url", url)):
            if not value.startswith("https://micropython.org/"):
                entry.fail(key, "must be on https://micropython.org/, where MicroPython "
                                "images come from")
        images.append(PinnedImage(
            file=entry.text("file", 120), chip=entry.choice("chip", CHIPS),
            micropython=entry.text("micropython", 20),
            bytes=entry.integer("bytes", 1, 32 * 1024 * 1024), sha256=sha,
            page=page, url=url))
    return images


# ---- compiled form for the firmware --------------------------------------------------


def compile_meter(meter: Meter, ct_rating_A: int | None = None) -> dict:
    """The plain-JSON structure the firmware loads for a meter.

    ``fields`` maps each field the meter has to
    ``[block_index, byte_offset, kind, num, den]``: the value starts ``byte_offset`` bytes
    into the register data of ``blocks[block_index]`` (a read of ``count`` registers from
    ``start``), and protocol value = register value * num / den. A field that is absent
    is one the meter cannot measure. ``serial_number`` (when the meter has one):
    ``[function, register, kind]``. ``ct_rating_A`` overrides the meter's default (a
    device with a different CT).
    """
    if ct_rating_A is None:
        ct_rating_A = meter.ct_rating_A
    if (not isinstance(ct_rating_A, int) or isinstance(ct_rating_A, bool)
            or not 1 <= ct_rating_A <= MAX_CT_RATING_A):
        raise ConfigError(f"{display_path(meter.path)}: ct_rating_A = {show(ct_rating_A)} "
                          f"(the device's override): must be an integer 1..{MAX_CT_RATING_A}")
    fields = {}
    for name in FIELD_NAMES:
        if name not in meter.fields:
            continue
        field = meter.fields[name]
        index = meter.block_of(field.register, field.width)
        assert index is not None  # load_meter checked every field lies in a block
        offset = 2 * (field.register - meter.blocks[index].start)
        fields[name] = [index, offset, field.kind, field.num, field.den]
    compiled = {
        "id": meter.id,
        "model": meter.model_code,
        "phases": meter.phases,
        "baud": meter.serial.baud,
        "parity": meter.serial.parity,
        "stop_bits": meter.serial.stop_bits,
        "slave": meter.default_slave,
        "function": meter.function,
        "blocks": [[b.start, b.count] for b in meter.blocks],
        "ct_rating_A": ct_rating_A,
        "fields": fields,
    }
    if meter.serial_number is not None:
        sn = meter.serial_number
        compiled["serial_number"] = [sn.function, sn.register, sn.kind]
    return compiled


def compile_board(board: Board) -> dict:
    """The plain-JSON structure the firmware loads for a board (``de_re`` null: the
    transceiver switches direction by itself)."""
    return {
        "id": board.id,
        "chip": board.chip,
        "uart": board.meter_bus.uart,
        "tx": board.meter_bus.tx_pin,
        "rx": board.meter_bus.rx_pin,
        "de_re": board.meter_bus.de_re_pin,
        "led": board.status_led.pin,
        "led_kind": board.status_led.kind,
        "flash_mb": board.flash_mb,
        "psram": board.psram,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.board_config",
        description="Validate boards/*.toml and boards/meters/*.toml; optionally print the "
                    "compiled JSON the firmware loads.")
    parser.add_argument("--json", action="store_true", help="print the compiled JSON")
    args = parser.parse_args(argv)
    try:
        boards = list_boards()
        meters = list_meters()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"boards": {b.id: compile_board(b) for b in boards},
                          "meters": {m.id: compile_meter(m) for m in meters}}, indent=2))
    else:
        print(f"ok: {len(boards)} boards ({', '.join(b.id for b in boards)}), "
              f"{len(meters)} meters ({', '.join(m.id for m in meters)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

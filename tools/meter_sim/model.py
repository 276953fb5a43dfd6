"""The simulated meter, sans-IO: register values of one meter model at simulated time t.

``MeterModel`` turns a load profile into what a meter measures (voltage, current, power,
frequency, power factor, energy counters) and encodes it into the meter's registers as
its TOML definition says (float32 high word first, u32 low word first, scaled u16...).
No sockets, no sleeping: time comes from the ``clock`` callable.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from tools.board_config import COUNTER_FIELDS, FUNCTIONS, FieldMap, Meter
from tools.errors import ConfigError, MeterRequestError
from tools.meter_sim.profiles import PROFILES, Profile, noise

ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3
MAX_READ_COUNT = 125

NOMINAL_VOLTAGE_V = 230.0
NOMINAL_FREQUENCY_HZ = 50.0
_F32_NAN_BITS = 0x7FC00000


@dataclass(frozen=True)
class Sample:
    """What an ideal bidirectional meter measures at time ``t``, in protocol units (not
    rounded). ``power_W`` and ``power_factor_milli`` are negative when exporting."""

    t: float
    voltage_dV: float
    current_mA: float  # per phase (L1 of a three-phase meter)
    power_W: float  # total
    frequency_cHz: float
    power_factor_milli: float
    import_Wh: float
    export_Wh: float
    alarm: int = 0
    # each phase, L1 first (one entry on a single-phase meter); the powers add up to
    # power_W and the first voltage and current are voltage_dV and current_mA
    phase_voltage_dV: tuple[float, ...] = ()
    phase_current_mA: tuple[float, ...] = ()
    phase_power_W: tuple[float, ...] = ()


def meter_view(meter: Meter, sample: Sample, reversed_ct: bool = False) -> Sample:
    """The sample as this meter shows it.

    ``reversed_ct``: the CT is mounted backwards, so power and power factor change sign
    and the import and export counters swap. A meter without an export field cannot tell
    the direction (PZEM): it shows magnitudes and counts all energy as import.
    """
    if reversed_ct:
        sample = replace(sample, power_W=-sample.power_W,
                         power_factor_milli=-sample.power_factor_milli,
                         import_Wh=sample.export_Wh, export_Wh=sample.import_Wh,
                         phase_power_W=tuple(-p for p in sample.phase_power_W))
    if "export_Wh" not in meter.fields:
        sample = replace(sample, power_W=abs(sample.power_W),
                         power_factor_milli=abs(sample.power_factor_milli),
                         import_Wh=sample.import_Wh + sample.export_Wh, export_Wh=0.0,
                         phase_power_W=tuple(abs(p) for p in sample.phase_power_W))
    return sample


def encode_field(field: FieldMap, value: float, counter: bool = False,
                 nan: bool = False) -> list[int]:
    """Registers holding ``value`` (protocol units) in the field's kind and scale.

    Integer kinds are unsigned: they hold the magnitude, rounded (counters truncated, as a
    meter's counter only shows whole units it has completed), saturated at the maximum.
    ``nan`` writes a NaN (f32) or all ones (integer kinds, which have no NaN).
    """
    raw = value * field.den / field.num  # register units
    if field.kind == "f32":
        bits = _F32_NAN_BITS if nan else struct.unpack(">I", struct.pack(">f", raw))[0]
        return [bits >> 16, bits & 0xFFFF]
    top = 0xFFFF if field.width == 1 else 0xFFFFFFFF
    if nan:
        n = top
    else:
        n = math.floor(abs(raw)) if counter else round(abs(raw))
        n = min(n, top)
    if field.kind == "u16":
        return [n]
    if field.kind == "u32le_words":
        return [n & 0xFFFF, n >> 16]
    if field.kind == "u32be_words":
        return [n >> 16, n & 0xFFFF]
    raise ValueError(f"register kind {field.kind!r} has no encoder")


def encode_registers(meter: Meter, sample: Sample, reversed_ct: bool = False,
                     nan_fields: Iterable[str] = ()) -> dict[int, int]:
    """Register address -> 16-bit value for every field of the meter and every phase
    value (``per_phase``); other registers of its blocks read as 0."""
    shown = meter_view(meter, sample, reversed_ct)
    nan_fields = set(nan_fields)
    registers: dict[int, int] = {}
    for name, phases in meter.per_phase.items():  # first: a field (L1) may overwrite
        values = getattr(shown, f"phase_{name}")
        for phase, value in enumerate(values):
            for i, word in enumerate(encode_field(phases.field(phase), value)):
                registers[phases.registers[phase] + i] = word
    for name, field in meter.fields.items():
        words = encode_field(field, getattr(shown, name), counter=name in COUNTER_FIELDS,
                             nan=name in nan_fields)
        for i, word in enumerate(words):
            registers[field.register + i] = word
    return registers


def resolve_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r}: unknown; one of {', '.join(PROFILES)}")
    return PROFILES[profile]


class MeterModel:
    """One simulated meter of ``meter``'s model with load ``profile``.

    Measurements are pure functions of (simulated time, seed). The energy counters
    integrate the profile's power from the creation time on a fixed grid
    (``ENERGY_STEP_S``), import and export separately, so they never go backwards and do
    not depend on when or how often the meter is read.
    """

    ENERGY_STEP_S = 10.0

    def __init__(self, meter: Meter, profile: str | Profile, clock: Callable[[], float],
                 seed: int = 0, start: float | None = None,
                 import_Wh: float | None = None, export_Wh: float | None = None):
        self.meter = meter
        self.profile = resolve_profile(profile)
        self.clock = clock
        self.seed = seed
        self.start = float(clock() if start is None else start)
        rng = random.Random(f"{seed}:counters")
        drawn_import = rng.uniform(200_000.0, 3_000_000.0)
        drawn_export = rng.uniform(100_000.0, 1_500_000.0) if self.profile.exports else 0.0
        self.initial_import_Wh = drawn_import if import_Wh is None else float(import_Wh)
        self.initial_export_Wh = drawn_export if export_Wh is None else float(export_Wh)
        self._step = 0  # energy integrated up to grid point start + _step * ENERGY_STEP_S
        self._imported = 0.0
        self._exported = 0.0

    def power_W(self, t: float) -> float:
        """Net active power at ``t``: import positive, export negative."""
        return self.profile.power_W(t, self.seed)

    def energy_Wh(self, t: float) -> tuple[float, float]:
        """Cumulative (import, export) energy at ``t``."""
        if t <= self.start:
            return self.initial_import_Wh, self.initial_export_Wh
        step_s = self.ENERGY_STEP_S
        target = math.floor((t - self.start) / step_s)
        if target < self._step:  # asked about an earlier time: integrate again from start
            self._step, self._imported, self._exported = 0, 0.0, 0.0
        while self._step < target:
            p = self.power_W(self.start + self._step * step_s)
            if p > 0:
                self._imported += p * step_s / 3600.0
            else:
                self._exported -= p * step_s / 3600.0
            self._step += 1
        # The partial step uses the power at its grid point: linear, so monotonic in t.
        p = self.power_W(self.start + self._step * step_s)
        partial_h = (t - self.start - self._step * step_s) / 3600.0
        imported = self._imported + max(p, 0.0) * partial_h
        exported = self._exported + max(-p, 0.0) * partial_h
        return self.initial_import_Wh + imported, self.initial_export_Wh + exported

    def sample_at(self, t: float) -> Sample:
        """What an ideal bidirectional meter measures at ``t``."""
        seed = self.seed
        p = self.power_W(t)
        volts = NOMINAL_VOLTAGE_V + 3.0 * noise(seed, "voltage", t, 900.0) - 0.8 * p / 1000.0
        hertz = NOMINAL_FREQUENCY_HZ + 0.04 * noise(seed, "frequency", t, 45.0)
        if abs(p) < 30.0:  # standby electronics
            pf = 0.55 + 0.15 * noise(seed, "pf", t, 600.0)
        elif p < 0:  # an inverter feeding in
            pf = 0.985 + 0.01 * noise(seed, "pf", t, 600.0)
        else:
            pf = 0.92 + 0.05 * noise(seed, "pf", t, 600.0)
        phase_volts, phase_powers = self._phases(t, volts, p)
        phase_amps = [abs(pk) / (vk * pf) for vk, pk in zip(phase_volts, phase_powers,
                                                            strict=True)]
        imported, exported = self.energy_Wh(t)
        return Sample(
            t=t,
            voltage_dV=phase_volts[0] * 10.0,
            current_mA=phase_amps[0] * 1000.0,
            power_W=p,
            frequency_cHz=hertz * 100.0,
            power_factor_milli=(pf if p >= 0 else -pf) * 1000.0,
            import_Wh=imported,
            export_Wh=exported,
            phase_voltage_dV=tuple(v * 10.0 for v in phase_volts),
            phase_current_mA=tuple(a * 1000.0 for a in phase_amps),
            phase_power_W=tuple(phase_powers),
        )

    def _phases(self, t: float, volts: float, p: float) -> tuple[list[float], list[float]]:
        """Each phase's voltage (V) and power (W) at ``t``: L1 at ``volts``, the others a
        little apart; the load shared unevenly and slowly changing, adding up to ``p``."""
        n, seed = self.meter.phases, self.seed
        phase_volts = [volts] + [volts + 2.0 * noise(seed, f"voltage L{k + 1}", t, 700.0)
                                 for k in range(1, n)]
        weights = [1.0 + 0.3 * noise(seed, f"share L{k + 1}", t, 1200.0) for k in range(n)]
        total = sum(weights)
        return phase_volts, [p * w / total for w in weights]

    @property
    def serial_number(self) -> int:
        """The meter's serial number, drawn from the seed (the model's width)."""
        sn = self.meter.serial_number
        top = 0xFFFF if sn is not None and sn.kind == "u16" else 99_999_999
        return random.Random(f"{self.seed}:serial").randint(1, top)

    def configuration_registers(self, function: int, slave: int) -> dict[int, int]:
        """Register address -> 16-bit value of the registers a meter serves besides its
        measurements, for ``function``: its serial number, and (function 03) its
        configuration (``holding``: the slave address it answers)."""
        registers: dict[int, int] = {}
        sn = self.meter.serial_number
        if sn is not None and sn.function == function:
            value = self.serial_number
            words = ([value] if sn.kind == "u16" else
                     [value >> 16, value & 0xFFFF] if sn.kind == "u32be_words" else
                     [value & 0xFFFF, value >> 16])
            registers.update((sn.register + i, w) for i, w in enumerate(words))
        if function == 3:
            values = {"slave_address": slave}
            for name, holding in self.meter.holding.items():
                words = encode_field(FieldMap(holding.register, holding.kind, 1, 1),
                                     values[name])
                registers.update((holding.register + i, w) for i, w in enumerate(words))
        return registers

    def sample(self) -> Sample:
        """The sample at the clock's current time."""
        return self.sample_at(self.clock())

    def read_registers(self, function: int, address: int, count: int,
                       reversed_ct: bool = False, nan_fields: Iterable[str] = (),
                       slave: int | None = None) -> list[int]:
        """Serve a read request at the clock's current time, or raise MeterRequestError
        with the exception code the meter answers with. ``slave``: the address the meter
        is set to (its holding register; default the meter's default_slave)."""
        if function not in FUNCTIONS:
            raise MeterRequestError(ILLEGAL_FUNCTION,
                                    f"function {function}: the meter serves reads with "
                                    f"functions {' and '.join(map(str, FUNCTIONS))}")
        if not 1 <= count <= MAX_READ_COUNT:
            raise MeterRequestError(ILLEGAL_DATA_VALUE, f"count {count}: must be 1..125")
        span = range(address, address + count)
        other = self.configuration_registers(
            function, self.meter.default_slave if slave is None else slave)
        if other and all(r in other for r in span):
            return [other[r] for r in span]
        if function != self.meter.function or self.meter.block_of(address, count) is None:
            raise MeterRequestError(ILLEGAL_DATA_ADDRESS,
                                    f"function {function} registers 0x{address:04X}+{count} "
                                    "are outside the meter's register map")
        registers = encode_registers(self.meter, self.sample(), reversed_ct, nan_fields)
        return [registers.get(r, 0) for r in span]

"""Meter simulator: a CT energy meter (SDM120CT, SDM630CT, PZEM-004T v3) answering
Modbus RTU over TCP, a pty or a serial port, with load profiles and fault injection.

Layers, from pure to I/O:

- ``profiles``: net power as a pure function of (simulated time, seed);
- ``model.MeterModel``: what the meter measures and its register values at time t;
- ``faults``: which requests go wrong, and how (deterministic for a seed);
- ``rtu_slave``: RTU request framing and replies, bytes in / bytes out;
- ``transports``: TCP, pty and serial byte streams around a ``MeterSlave``;
- ``__main__``: the command line, ``python -m tools.meter_sim --help``.

In-process use::

    meter = get_meter("sdm120ct")
    model = MeterModel(meter, "pv-producer", SimClock(start=time.time(), speed=60), seed=1)
    slave = MeterSlave(model, address=1, faults=FaultPlan([parse_fault("crc:0.1")], seed=1))
    server = await serve_tcp(slave, "127.0.0.1", 0)
"""

from tools.board_config import get_meter
from tools.meter_sim.clock import ManualClock, SharedClock, SimClock
from tools.meter_sim.faults import FAULT_KINDS, Fault, FaultPlan, parse_fault
from tools.meter_sim.model import MeterModel, Sample, encode_registers, meter_view
from tools.meter_sim.profiles import PROFILES
from tools.meter_sim.rtu_slave import MeterSlave, RequestParser
from tools.meter_sim.transports import (
    PtyEndpoint,
    SerialEndpoint,
    serve_pty,
    serve_serial,
    serve_tcp,
)

__all__ = [
    "FAULT_KINDS",
    "PROFILES",
    "Fault",
    "FaultPlan",
    "ManualClock",
    "MeterModel",
    "MeterSlave",
    "PtyEndpoint",
    "RequestParser",
    "Sample",
    "SerialEndpoint",
    "SharedClock",
    "SimClock",
    "encode_registers",
    "get_meter",
    "meter_view",
    "parse_fault",
    "serve_pty",
    "serve_serial",
    "serve_tcp",
]

"""Command line of the meter simulator: ``python -m tools.meter_sim --help``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import textwrap
import time
from datetime import UTC, datetime

from gateway import simclock
from gateway.errors import ConfigError as GatewayConfigError
from tools.board_config import list_meters
from tools.errors import ConfigError
from tools.meter_sim.clock import SharedClock, SimClock
from tools.meter_sim.faults import FAULT_KINDS, FaultPlan, parse_fault
from tools.meter_sim.model import MeterModel
from tools.meter_sim.profiles import PROFILES
from tools.meter_sim.rtu_slave import MeterSlave
from tools.meter_sim.transports import (
    PtyEndpoint,
    SerialEndpoint,
    serve_pty,
    serve_serial,
    serve_tcp,
)

PROG = "python -m tools.meter_sim"

_EPILOG = """\
profiles (net power as a function of simulated time; the clock reads as local solar time):
{profiles}

faults (--fault SPEC [SPEC ...], SPEC = KIND[=VALUE][:PROBABILITY | @N[,N...]];
        no trigger = every request):
{faults}
  e.g. --fault crc:0.1 no-reply@3,4 exception=2:0.05 nan=voltage_dV@7 reversed-ct

TCP carries raw Modbus RTU frames (address, PDU, CRC) over the stream, without the
Modbus/TCP MBAP header: a device connects and writes the same bytes it would put on the
RS-485 line. Each line of the form 'meter_sim: listening <transport> <where>' on stdout
tells where it serves (port 0 picks a free port).

example:
  {prog} --meter sdm120ct --profile pv-producer --tcp 127.0.0.1:5020 --speed 60
"""


def _epilog() -> str:
    def entry(name: str, text: str) -> str:
        return textwrap.fill(text, width=88, initial_indent=f"  {name:14} ",
                             subsequent_indent=" " * 17)

    profiles = "\n".join(entry(p.name, p.description) for p in PROFILES.values())
    faults = "\n".join(entry(kind, text) for kind, text in FAULT_KINDS.items())
    return _EPILOG.format(profiles=profiles, faults=faults, prog=PROG)


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value
    return parse


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1e6:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1000000]")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:5020)")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {port!r} is not an integer") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is not in 0..65535")
    return host, number


def _start(text: str) -> float:
    if text == "now":
        return time.time()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'now' or an ISO 8601 time (e.g. 2025-06-21T06:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def build_parser(meter_ids: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Simulate a CT energy meter answering Modbus RTU requests over TCP, a "
                    "pty pair or a serial port (e.g. a USB-RS485 adapter).",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meter", required=True, metavar="ID",
                        help=f"meter model, from boards/meters/: {', '.join(meter_ids)}")
    parser.add_argument("--profile", required=True, choices=list(PROFILES),
                        help="load profile (see below)")
    where = parser.add_argument_group("where to serve (at least one)")
    where.add_argument("--tcp", type=_host_port, metavar="HOST:PORT",
                       help="listen on TCP, raw RTU frames (no MBAP header)")
    where.add_argument("--pty", action="store_true",
                       help="open a pty pair; the client opens the printed /dev/pts/N")
    where.add_argument("--serial", metavar="DEVICE",
                       help="serve on a serial port with the meter's baud/parity/stop bits")
    parser.add_argument("--slave", type=_int_in(1, 247), metavar="N",
                        help="slave address (default: the meter's default_slave)")
    parser.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0, metavar="N",
                        help="seed for the profile's randomness and the faults (default 0)")
    parser.add_argument("--speed", type=_speed, default=None, metavar="X",
                        help="simulated seconds per real second (default 1; with "
                             f"${simclock.ENV} set, that clock's speed)")
    parser.add_argument("--start", type=_start, default=None, metavar="TIME",
                        help="simulated start time: 'now' (default) or ISO 8601, UTC "
                             f"unless an offset is given (not with ${simclock.ENV})")
    parser.add_argument("--fault", action="extend", nargs="+", default=[], metavar="SPEC",
                        help="inject faults (see below); takes several specs, repeatable")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log faults (-v) and every request (-vv) to stderr")
    return parser


def _say(text: str):
    print(f"meter_sim: {text}", flush=True)


async def _serve(args, meter, model, slave) -> int:
    servers: list[asyncio.Server] = []
    endpoints: list[PtyEndpoint | SerialEndpoint] = []
    option = ""
    try:
        if args.tcp:
            option = f"--tcp {args.tcp[0]}:{args.tcp[1]}"
            server = await serve_tcp(slave, *args.tcp)
            servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                _say(f"listening tcp {host}:{port} (raw RTU frames, no MBAP header)")
        if args.pty:
            option = "--pty"
            pty = await serve_pty(slave)
            endpoints.append(pty)
            _say(f"listening pty {pty.path}")
        if args.serial:
            option = f"--serial {args.serial}"
            endpoints.append(await serve_serial(slave, args.serial, meter.serial))
            s = meter.serial
            _say(f"listening serial {args.serial} {s.baud} 8{s.parity}{s.stop_bits}")
    except OSError as exc:  # port in use, no such device, permission denied
        print(f"{PROG}: error: {option}: {exc}", file=sys.stderr)
        for server in servers:
            server.close()
        for endpoint in endpoints:
            endpoint.close()
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
        await server.wait_closed()
    for endpoint in endpoints:
        endpoint.close()
    faults = ", ".join(f"{k[6:]} {v}" for k, v in sorted(slave.stats.items())
                       if k.startswith("fault:")) or "none"
    _say(f"stopped after {slave.requests} requests, {slave.stats['replies']} replies "
         f"(faults: {faults})")
    return 0


def _clock(parser: argparse.ArgumentParser, args) -> SimClock | SharedClock:
    """The shared clock of an accelerated run when $WATTSHARE_SIM_CLOCK is set (the
    meter's counters then agree with the device's and the gateway's time), else --start
    and --speed."""
    try:
        shared = SharedClock.from_env()
    except GatewayConfigError as exc:
        parser.error(str(exc))
    if shared is None:
        return SimClock(start=time.time() if args.start is None else args.start,
                        speed=1.0 if args.speed is None else args.speed)
    if args.start is not None:
        parser.error(f"--start: the simulated time comes from ${simclock.ENV}; drop --start "
                     "or unset the variable")
    if args.speed is not None and args.speed != shared.speed:
        parser.error(f"--speed {args.speed:g} differs from ${simclock.ENV} (speed "
                     f"{shared.speed:g}); drop --speed or unset the variable")
    return shared


def main(argv=None) -> int:
    try:
        meters = {m.id: m for m in list_meters()}
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    parser = build_parser(list(meters))
    args = parser.parse_args(argv)
    if not (args.tcp or args.pty or args.serial):
        parser.error("choose where to serve: at least one of --tcp, --pty, --serial")
    if args.meter not in meters:
        parser.error(f"--meter {args.meter!r}: unknown; one of {', '.join(meters)}")
    meter = meters[args.meter]
    address = args.slave if args.slave is not None else meter.default_slave
    try:
        faults = FaultPlan([parse_fault(spec) for spec in args.fault], seed=args.seed,
                           meter=meter, slave=address)
    except ConfigError as exc:
        parser.error(f"--fault: {exc}")
    if args.verbose:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("tools.meter_sim").setLevel(
            logging.DEBUG if args.verbose > 1 else logging.INFO)

    clock = _clock(parser, args)
    model = MeterModel(meter, args.profile, clock, seed=args.seed)
    slave = MeterSlave(model, address, faults)
    start = datetime.fromtimestamp(model.start, UTC).isoformat(timespec="seconds")
    shared = f" (shared clock ${simclock.ENV})" if isinstance(clock, SharedClock) else ""
    general = (f" (and 0x{meter.general_address:02X}, the general address)"
               if meter.general_address is not None else "")
    _say(f"{meter.id} ({meter.name}, model {meter.model_code}) as slave {address}{general}, "
         f"profile {args.profile}, seed {args.seed}, speed {clock.speed:g}x{shared}, "
         f"simulated start {start}")
    if faults.faults:
        _say(f"faults: {' '.join(str(f) for f in faults.faults)}")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(args, meter, model, slave))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``wattshare meter ...``: the installer's commands, from a blank ESP32 to a commissioned
meter (docs/installer.md).

    wattshare meter flash      MicroPython onto the board (esptool)
    wattshare meter deploy     the firmware and its configuration onto the board
    wattshare meter provision  configure, enrol at the gateway, check and record

Registered into the one ``wattshare`` CLI (tools/cli.py). Every failure ends with one
line ``wattshare: error: ...`` saying what is wrong and what to do, and exit status 1
(2 for a configuration error).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from tools.errors import BoardError, BoardLinkError, ConfigError, InstallError, ToolsError

DEFAULT_BOARD = "esp32-devkitc-max485"


def register(subparsers) -> None:
    """Add the ``meter`` command group to the ``wattshare`` parser."""
    meter = subparsers.add_parser(
        "meter", help="install a meter: flash MicroPython, deploy the firmware, provision",
        description="Turn a blank ESP32 next to a meter into a commissioned Wattshare meter. "
                    "See docs/installer.md.")
    sub = meter.add_subparsers(dest="meter_command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "flash", help="write MicroPython onto a blank ESP32 (esptool)",
        description="Check the MicroPython image (chip, size, SHA-256 against "
                    "boards/micropython/images.toml) and write it with esptool at the "
                    "board's offset and baud rate. Download the image from the board's page "
                    "on micropython.org first.")
    p.add_argument("--port", required=True, help="serial port of the board (/dev/ttyUSB0)")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"board id from boards/ "
                                                          f"(default {DEFAULT_BOARD})")
    p.add_argument("--image", required=True, type=Path, help="the MicroPython .bin file")
    p.add_argument("--dry-run", action="store_true",
                   help="check the image and print the esptool command only")
    p.set_defaults(func=_guard(_cmd_flash))

    p = sub.add_parser(
        "deploy", help="copy the firmware and the board/meter configuration onto the board",
        description="Compile the firmware (as make firmware), then copy what changed onto "
                    "the board (hashes read back first), remove stale firmware files, and "
                    "check every copied file on the board.")
    p.add_argument("--port", required=True, help="serial port of the board")
    p.add_argument("--board", default=DEFAULT_BOARD, help=f"board id from boards/ "
                                                          f"(default {DEFAULT_BOARD})")
    p.add_argument("--meter", help="meter id from boards/meters/ (writes config/meter.json)")
    p.add_argument("--firmware", type=Path,
                   help="a firmware build folder (default: compile this tree)")
    p.set_defaults(func=_guard(_cmd_deploy))

    from tools import meter_provision

    meter_provision.add_arguments(sub.add_parser(
        "provision", help="configure the meter, enrol it at the gateway, check and record it",
        description="Configure the meter, check it through the board, enrol it at the "
                    "gateway with the technician's one-time code, and have the device sign "
                    "the commissioning record that goes to the gateway.",
        epilog="See docs/installer.md for each check and what its failure message means."))


def _guard(command):
    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except ConfigError as e:
            print(f"wattshare: error: {e}", file=sys.stderr)
            return 2
        except (InstallError, BoardLinkError) as e:
            print(f"wattshare: error: {e}", file=sys.stderr)
            return 1
        except BoardError as e:
            print(f"wattshare: error: the board raised an error:\n{e}\n(is the firmware "
                  "deployed and up to date? wattshare meter deploy)", file=sys.stderr)
            return 1
        except ToolsError as e:
            print(f"wattshare: error: {e}", file=sys.stderr)
            return 1

    return run


def _cmd_flash(args: argparse.Namespace) -> int:
    from tools import meter_flash

    meter_flash.flash(args.port, args.board, args.image, dry_run=args.dry_run)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from tools.board_link import BoardLink
    from tools.meter_deploy import deploy

    with BoardLink(args.port) as link:
        deploy(link, args.board, args.meter, args.firmware)
    print(f"next: wattshare meter provision --port {args.port} --gateway HOST --code CODE ...")
    return 0



guarded = _guard

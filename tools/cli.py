"""The one ``wattshare`` command line (console script ``wattshare = tools.cli:main``).

Each area of the project adds its command groups through a module-level
``register(subparsers)`` function; list the module in :data:`COMMAND_MODULES`. A
command handler receives the parsed arguments and returns the exit status.

Every listed module is imported for every command, ``--help`` included: keep it light
and import heavy libraries (web3, eth-account, ...) inside the command handlers.
"""

import argparse
import importlib
import sys

# Modules with a register(subparsers) function, in the order their commands are listed.
COMMAND_MODULES = [
    "gateway.cli",  # gateway init/run/status, device add/list/show/revoke
    "gateway.chain.cli",  # chain deploy/status/run/retry, community ..., verify, export-*
    "tools.meter_cli",  # meter flash/deploy/provision (the installer)
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="wattshare",
        description="Wattshare: neighbours share solar energy with proof. Meters sign their "
                    "readings, a gateway verifies and stores them, a chain settles them.",
        epilog="Run `wattshare COMMAND --help` for the commands of each group.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None):
    from gateway.cli import run_command

    args = build_parser().parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m gateway COMMAND`` = ``wattshare gateway COMMAND`` (init, run, status).

The service starts this way (gateway/deploy/wattshare-gateway.service): it loads only
the gateway's own commands, not every command group of the ``wattshare`` CLI and their
libraries.
"""

import argparse
import sys

from gateway import cli


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Set up, run and inspect the Wattshare gateway (same as `wattshare "
                    "gateway`). See docs/gateway.md.",
    )
    cli.add_gateway_commands(parser.add_subparsers(dest="gateway_command", metavar="COMMAND",
                                                   required=True))
    args = parser.parse_args(argv)
    return cli.run_command(args, prog="python -m gateway")


if __name__ == "__main__":  # spawned child processes may import this module too
    sys.exit(main())

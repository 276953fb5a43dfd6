"""``wattshare chain ...``, ``wattshare community ...``, ``wattshare verify``,
``wattshare export-proof``, ``wattshare export-allocations``.

Registered into the one ``wattshare`` CLI by :func:`register` (see tools/cli.py). The
handlers live in :mod:`gateway.chain.commands`, imported only when one of them runs, so
``wattshare --help`` and the gateway's own commands do not pay for web3.
"""

import argparse
from pathlib import Path

from gateway import keystore
from gateway.chain import defaults
from gateway.cli import _guard


def _handler(name):
    """The handler ``name`` of :mod:`gateway.chain.commands`, imported when it runs."""

    def run(args):
        from gateway.chain import commands

        return _guard(getattr(commands, name))(args)

    return run


def register(subparsers):
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument("--config", metavar="PATH", type=Path, default=None,
                             help="gateway.toml (default: $WATTSHARE_CONFIG, else "
                                  "$WATTSHARE_DATA/gateway.toml)")
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--admin-key-file", metavar="FILE", type=Path,
                       help="community admin's private key (hex); default on the embedded "
                            "anvil: its development account 0")

    ch = subparsers.add_parser("chain", help="deploy the contracts, submit intervals, status",
                               description="The gateway's link to the settlement chain. "
                                           "See docs/chain.md.")
    sub = ch.add_subparsers(dest="chain_command", metavar="COMMAND", required=True)
    p = sub.add_parser("deploy", parents=[with_config, admin],
                       help="deploy token, registry and settlement; authorise this gateway",
                       description="Deploy the community's contracts to [chain] rpc_url (the "
                                   "embedded anvil by default), authorise this gateway and "
                                   "write the settlement address to gateway.toml.")
    p.add_argument("--settle-delay", type=int, default=defaults.SETTLE_DELAY_S,
                   metavar="S", help="seconds after an interval before anyone may settle it")
    p.add_argument("--price", type=int, default=defaults.PRICE, metavar="UNITS",
                   help="P2P price, token units per Wh")
    p.add_argument("--force", action="store_true", help="deploy again over a deployment")
    p.set_defaults(func=_handler("cmd_deploy"))

    p = sub.add_parser("status", parents=[with_config], help="node, contract, outbox")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_handler("cmd_status"))

    p = sub.add_parser("run", parents=[with_config],
                       help="build and submit closed intervals (foreground, until SIGTERM)")
    p.add_argument("--passphrase-file", metavar="FILE", type=Path,
                   help=f"keystore passphrase (else ${keystore.ENV_PASSPHRASE})")
    p.add_argument("--once", action="store_true",
                   help="build what is due, drive the outbox until nothing moves, exit")
    p.add_argument("--batch-intervals", type=int, choices=range(1, 9), metavar="1..8",
                   help="intervals per submission (default: [chain] batch_intervals; "
                        "fewer settle sooner, more cost less gas per reading)")
    p.set_defaults(func=_handler("cmd_run"))

    p = sub.add_parser("node", parents=[with_config],
                       help="run the embedded chain node in the foreground; print its URL",
                       description="With [chain] rpc_url = \"anvil\": print the embedded "
                                   "node's JSON-RPC URL, starting it from the data folder if "
                                   "`wattshare chain run` is not running (then it runs until "
                                   "Ctrl-C). Give the URL to `wattshare verify --bundle FILE "
                                   "--rpc URL`.")
    p.set_defaults(func=_handler("cmd_node"))

    p = sub.add_parser("retry", parents=[with_config], help="retry a failed interval")
    p.add_argument("--interval", type=int, required=True, metavar="N")
    p.set_defaults(func=_handler("cmd_retry"))

    cm = subparsers.add_parser("community", help="gateways, meters, price, producer keys",
                               description="Administer the community's contracts.")
    sub = cm.add_subparsers(dest="community_command", metavar="COMMAND", required=True)
    p = sub.add_parser("add-gateway", parents=[with_config, admin],
                       help="authorise a gateway account")
    p.add_argument("address", metavar="0x...")
    p.set_defaults(func=_handler("cmd_add_gateway"))
    p = sub.add_parser("add-meter", parents=[with_config, admin],
                       help="register a commissioned device on chain and map its index",
                       description="Register a device of this gateway (wattshare device add) "
                                   "in the MeterRegistry (device id, sha256 of its key, owner, "
                                   "this gateway) and store the meter index it gets. With "
                                   "--index, only link a meter registered before.")
    p.add_argument("--device", required=True, nargs="+", metavar="HEX",
                   help="device id (several: one after the other)")
    p.add_argument("--index", type=int, metavar="N", help="existing on-chain meter index")
    p.set_defaults(func=_handler("cmd_add_meter"))
    p = sub.add_parser("set-price", parents=[with_config, admin], help="P2P price")
    p.add_argument("--price", type=int, required=True, metavar="UNITS",
                   help="token units per Wh")
    p.set_defaults(func=_handler("cmd_set_price"))
    p = sub.add_parser("producer-key", parents=[with_config],
                       help="a producer's own sharing key (signed by the meter's owner)",
                       description="Beneficiaries are meter indices, device ids or device "
                                   "labels. Examples: --static school=4000 (basis points), "
                                   "--prorata school,home, --priority school,home, --none.")
    p.add_argument("--meter", required=True, help="producer: meter index, device id or label")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--static", metavar="M=BPS,...")
    kind.add_argument("--percent", metavar="M=BPS,...",
                      help="percent, redistributing what a beneficiary cannot take")
    kind.add_argument("--prorata", metavar="M,...")
    kind.add_argument("--priority", metavar="M,...")
    kind.add_argument("--none", action="store_true", help="everything to the community pool")
    p.add_argument("--owner-key-file", type=Path, metavar="FILE",
                   help="the producer meter owner's private key (hex)")
    p.add_argument("--anvil-account", type=int, metavar="N",
                   help="embedded anvil only: sign with development account N")
    p.set_defaults(func=_handler("cmd_producer_key"))
    p = sub.add_parser("members", parents=[with_config],
                       help="which on-chain meter index is whose: labels, devices, owners")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_handler("cmd_members"))
    p = sub.add_parser("report", parents=[with_config],
                       help="a member's energy and tokens over days, from the chain",
                       description="One member (label, device id or meter index) over local "
                                   "days: kWh to and from each party, the pool share, the "
                                   "grid, tokens earned, paid and owed, and the bill at the "
                                   "community's tariffs ([community] in gateway.toml).")
    p.add_argument("--member", required=True, metavar="NAME")
    p.add_argument("--from", dest="first", metavar="YYYY-MM-DD")
    p.add_argument("--to", dest="last", metavar="YYYY-MM-DD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_handler("cmd_report"))
    p = sub.add_parser("fund", parents=[with_config, admin],
                       help="treasury (admin) prepays a member's settlement balance")
    p.add_argument("--account", required=True, nargs="+", metavar="0x...",
                   help="member account(s): each gets --amount")
    p.add_argument("--amount", required=True, type=int, metavar="UNITS")
    p.set_defaults(func=_handler("cmd_fund"))

    rpc_opt = argparse.ArgumentParser(add_help=False)
    rpc_opt.add_argument("--rpc", metavar="URL", help="JSON-RPC node (default: the config's)")
    p = subparsers.add_parser("verify", parents=[with_config],
                              help="check a reading: signature, Merkle path, root on chain",
                              description="Check a stored reading (--reading) or a proof "
                                          "bundle (--bundle, needs only --rpc): its signature, "
                                          "its Merkle path, the root that commits it in the "
                                          "settlement contract's storage and the contract's "
                                          "own code, proven against a block header. Give "
                                          "--rpc twice to have two nodes agree on that block.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--reading", type=int, metavar="ID")
    what.add_argument("--bundle", type=Path, metavar="FILE")
    p.add_argument("--rpc", metavar="URL", action="append", default=[],
                   help="JSON-RPC node (default: the config's); twice: both must have the "
                        "bundle's block, else the reading is refused")
    p.add_argument("--confirmations", type=int, metavar="N", default=None,
                   help="blocks the submission's block needs on top, itself included "
                        "(default: [chain] confirmations, or 1 with --bundle)")
    p.set_defaults(func=_handler("cmd_verify"))
    p = subparsers.add_parser("export-proof", parents=[with_config],
                              help="write a reading's proof bundle (JSON)")
    p.add_argument("--reading", type=int, required=True, metavar="ID")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    p.set_defaults(func=_handler("cmd_export_proof"))
    p = subparsers.add_parser("export-allocations", parents=[with_config, rpc_opt],
                              help="P2P and pool allocations from the chain, as CSV")
    p.add_argument("--interval", type=int, metavar="N")
    p.add_argument("--from", dest="first", type=int, metavar="N")
    p.add_argument("--to", dest="last", type=int, metavar="N")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.csv")
    p.set_defaults(func=_handler("cmd_export_allocations"))


# ---- helpers

"""``wattshare gateway ...`` and ``wattshare device ...``: commissioning and running.

Registered into the one ``wattshare`` CLI by :func:`register` (see tools/cli.py).
"""

import argparse
import functools
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from gateway import config as gwconfig
from gateway import keystore, logs, registry, simclock, status, store, units
from gateway.errors import ConfigError, GatewayError, InvalidDevice


def register(subparsers):
    """Add the ``gateway`` and ``device`` command groups to the ``wattshare`` parser."""
    gw = subparsers.add_parser(
        "gateway", help="set up, run and inspect the Raspberry Pi gateway",
        description="Set up, run and inspect the gateway that receives signed meter readings "
                    "over CoAP, verifies and stores them. See docs/gateway.md.",
    )
    add_gateway_commands(gw.add_subparsers(dest="gateway_command", metavar="COMMAND",
                                           required=True))
    dev = subparsers.add_parser(
        "device", help="commission, list and revoke meters",
        description="The device registry: which meters may send readings, with which key.",
    )
    add_device_commands(dev.add_subparsers(dest="device_command", metavar="COMMAND",
                                           required=True))


def _with_config():
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config", metavar="PATH", type=Path, default=None,
        help="gateway.toml (default: $WATTSHARE_CONFIG, else $WATTSHARE_DATA/gateway.toml, "
             f"else {gwconfig.DEFAULT_DATA_DIR}/gateway.toml)",
    )
    return parent


def add_gateway_commands(gw_sub):
    """``init``, ``run``, ``status``: the ``wattshare gateway`` group and ``python -m gateway``."""
    with_config = _with_config()
    p = gw_sub.add_parser(
        "init", help="create the data folder, gateway.toml, the database and the chain key",
        description="Create DIR with gateway.toml (defaults written out with comments), the "
                    "SQLite database and the gateway's encrypted chain key. An existing "
                    "key or database is never overwritten.",
    )
    p.add_argument("--data", metavar="DIR", type=Path, default=None,
                   help=f"data folder (default: $WATTSHARE_DATA, else "
                        f"{gwconfig.DEFAULT_DATA_DIR})")
    p.add_argument("--force", action="store_true",
                   help="rewrite an existing gateway.toml (keeps the key and the database)")
    p.add_argument("--passphrase-file", metavar="FILE", type=Path,
                   help=f"file holding the keystore passphrase (else "
                        f"${keystore.ENV_PASSPHRASE}, else a prompt)")
    p.add_argument("--coap-port", type=int, metavar="N", help="CoAP port (default 5683)")
    p.add_argument("--http-port", type=int, metavar="N",
                   help="status page / metrics port (default 8683)")
    p.set_defaults(func=_guard(cmd_init))

    p = gw_sub.add_parser("run", parents=[with_config], help="run the gateway (foreground)",
                          description="Run the gateway until SIGTERM/SIGINT; logs go to stderr.")
    p.set_defaults(func=_guard(cmd_run))

    p = gw_sub.add_parser(
        "status", parents=[with_config],
        help="devices, last seen, readings/s, rejects, storage, chain link",
        description="Summarise the gateway from its database (works while it runs or not).",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guard(cmd_status))


def add_device_commands(dev_sub):
    """``invite``, ``invites``, ``cancel-invite``, ``add``, ``list``, ``show``,
    ``readings``, ``revoke`` (the ``wattshare device`` group)."""
    with_config = _with_config()
    p = dev_sub.add_parser(
        "invite", parents=[with_config],
        help="a one-time code with which a new meter registers itself",
        description="Issue a one-time enrolment code for a meter that is not installed yet. "
                    "The installer gives it to `wattshare meter provision --code`; the meter "
                    "then registers itself with the label, owner, model and CT rating given "
                    "here, proving it holds its key. The code is printed once, works once, "
                    "expires, and is stored only as a hash.",
    )
    p.add_argument("--label", required=True, metavar="TEXT", help="where/what it is")
    p.add_argument("--owner", required=True, metavar="0x...", help="owner's EVM account")
    p.add_argument("--expires", default="30m", metavar="DURATION",
                   help="how long the code works: 30m, 2h, 1d (default 30m, at most 7d)")
    p.add_argument("--meter", metavar="MODEL",
                   help="meter model the device must read (e.g. sdm120ct or SDM120CT; "
                        "default: whatever it reports)")
    p.add_argument("--ct-rating", type=float, metavar="N",
                   help="current transformer rating in A (default: the model's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guard(cmd_device_invite))

    p = dev_sub.add_parser(
        "invites", parents=[with_config], help="the invites still open (--all: every one)",
        description="List the enrolment invites: label, owner, model, CT rating, when each "
                    "expires and its state. Codes are never shown again (only a hash is "
                    "kept).")
    p.add_argument("--all", action="store_true", help="used and expired invites too")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guard(cmd_device_invites))

    p = dev_sub.add_parser(
        "cancel-invite", parents=[with_config], help="end an open invite now",
        description="End an open invite now (a code given out by mistake, or lost): a meter "
                    "that tries it is refused as with an expired code. A used invite cannot "
                    "be cancelled: revoke the device it enrolled.")
    p.add_argument("invite", type=int, metavar="ID", help="the invite's number "
                   "(wattshare device invites)")
    p.set_defaults(func=_guard(cmd_device_cancel_invite))

    p = dev_sub.add_parser("add", parents=[with_config], help="register a meter",
                           description="Register a meter so the gateway accepts its readings.")
    p.add_argument("--id", required=True, metavar="HEX", help="device id, 8 bytes in hex")
    p.add_argument("--pubkey", required=True, metavar="HEX",
                   help="device P-256 public key, SEC1 hex (65 bytes 04..., or 33 compressed)")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="meter model: SDM120CT, SDM630CT, PZEM004T_V3 (or its boards/meters/ "
                        "id, e.g. sdm120ct)")
    p.add_argument("--owner", required=True, metavar="0x...", help="owner's EVM account")
    p.add_argument("--label", required=True, metavar="TEXT", help="where/what it is")
    p.add_argument("--ct-rating", "--ct-rating-a", dest="ct_rating_a", type=float, metavar="N",
                   help="current transformer rating in A (default: the model's, 100 A)")
    p.set_defaults(func=_guard(cmd_device_add))

    p = dev_sub.add_parser(
        "import", parents=[with_config], help="register many meters from a CSV file",
        description="Register every meter of a CSV file in one transaction: all of them, "
                    "or none if any line is wrong (the error names the line). The first "
                    "line names the columns: id, pubkey, model, owner, label and optionally "
                    "ct_rating_a, with the values `device add` takes.")
    p.add_argument("file", metavar="FILE", help="the CSV file (- for standard input)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guard(cmd_device_import))

    p = dev_sub.add_parser("list", parents=[with_config], help="list registered meters")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guard(cmd_device_list))

    p = dev_sub.add_parser("show", parents=[with_config], help="one meter in detail")
    p.add_argument("id", metavar="ID", help="device id (hex)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guard(cmd_device_show))

    p = dev_sub.add_parser("readings", parents=[with_config],
                           help="a meter's stored readings, newest last: pick one to prove",
                           description="The readings the gateway stored for one meter (by "
                                       "device id, label or on-chain meter index), in the "
                                       "order they arrived, in local time and kWh, with the "
                                       "settlement interval each is committed to. The first "
                                       "column is the reading id `wattshare verify --reading` "
                                       "and `wattshare export-proof --reading` take.")
    p.add_argument("id", metavar="ID", help="device id (hex), label or meter index")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="the last N readings (default 20; 0 = all)")
    p.add_argument("--after-seq", type=int, metavar="SEQ",
                   help="only readings with a sequence number above SEQ")
    p.add_argument("--date", metavar="YYYY-MM-DD",
                   help="only readings stamped on this local day ([community] timezone)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guard(cmd_device_readings))

    p = dev_sub.add_parser("revoke", parents=[with_config],
                           help="refuse a meter's readings from now on (4.03 revoked)")
    p.add_argument("id", metavar="ID", help="device id (hex)")
    p.set_defaults(func=_guard(cmd_device_revoke))


def _guard(command):
    @functools.wraps(command)
    def run(args):
        try:
            return command(args)
        except GatewayError as e:
            print(f"wattshare: error: {e}", file=sys.stderr)
            return 2 if isinstance(e, ConfigError) else 1

    return run


ENV_DEBUG = "WATTSHARE_DEBUG"
EXIT_INTERNAL = 70  # EX_SOFTWARE


def run_command(args, prog="wattshare"):
    """Run the parsed command ``args.func(args)`` the way every ``wattshare`` command
    ends: no Python traceback reaches the user. An error the command raises on purpose
    is one line naming what to fix; a closed output pipe (``... | head``) or Ctrl-C ends
    quietly; anything else is a fault of ours, told as such (the traceback with
    ``$WATTSHARE_DEBUG=1``)."""
    from wattcore.errors import WattcoreError

    from tools.errors import ConfigError as ToolsConfigError
    from tools.errors import ToolsError

    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except (GatewayError, ToolsError, WattcoreError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, ToolsConfigError)) else 1
    except BrokenPipeError:
        # The reader went away: stop writing, and keep the interpreter from failing
        # again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - supervisor of a command: the user gets one line
        if os.environ.get(ENV_DEBUG):
            raise
        print(f"{prog}: internal error: {type(e).__name__}: {e}\n"
              f"{prog}: this is a fault of wattshare, not of your input; run again with "
              f"{ENV_DEBUG}=1 for the details, and report them", file=sys.stderr)
        return EXIT_INTERNAL


def _open_db(cfg):
    if not cfg.db_path.exists():
        raise ConfigError(
            f"{cfg.path}: [gateway] data_dir = {cfg.data_dir} holds no database "
            f"{gwconfig.DB_NAME}; run `wattshare gateway init`"
        )
    return store.open_store(cfg.db_path)


# -- gateway -------------------------------------------------------------------------


def cmd_init(args):
    import os

    data = args.data or Path(os.environ.get(gwconfig.ENV_DATA) or gwconfig.DEFAULT_DATA_DIR)
    data = data.resolve()
    config_path = data / gwconfig.CONFIG_NAME
    if config_path.exists() and not args.force:
        raise ConfigError(
            f"{config_path} already exists; pass --force to rewrite it "
            "(the key and database are kept)"
        )
    overrides = {"gateway": {"data_dir": "."}}
    if args.coap_port is not None:
        overrides["coap"] = {"port": args.coap_port}
    if args.http_port is not None:
        overrides["http"] = {"port": args.http_port}
    text = gwconfig.render(overrides)
    cfg = gwconfig.parse(text, config_path)
    key_exists = cfg.keystore_path.exists()
    passphrase = None if key_exists else keystore.read_passphrase(args.passphrase_file,
                                                                  confirm=True)
    try:
        data.mkdir(parents=True, exist_ok=True, mode=0o750)
        tmp = config_path.with_suffix(".toml.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(config_path)
    except OSError as e:
        raise ConfigError(f"{config_path}: cannot write: {e}") from None
    store.open_store(cfg.db_path).close()
    if key_exists:
        address = keystore.address(cfg.keystore_path)
        key_note = "kept the existing key"
    else:
        address = keystore.create(cfg.keystore_path, passphrase)
        key_note = "new key, encrypted"
    print(f"config:   {config_path}")
    print(f"database: {cfg.db_path} (schema {store.SCHEMA_VERSION})")
    print(f"keystore: {cfg.keystore_path} ({key_note})")
    print(f"gateway chain account: {address}")
    print(f"next: wattshare device add --config {config_path} --id ... ; "
          f"wattshare gateway run --config {config_path}")
    return 0


def cmd_run(args):
    import uvloop

    from gateway.app import serve

    cfg = gwconfig.load(args.config)
    simclock.active()  # a malformed $WATTSHARE_SIM_CLOCK stops here, named
    if not cfg.db_path.exists():
        # Serving would create an empty database and refuse every meter: most likely the
        # wrong --config, or a data folder never initialised.
        raise ConfigError(
            f"{cfg.path}: [gateway] data_dir = {cfg.data_dir} holds no database "
            f"{gwconfig.DB_NAME}: run `wattshare gateway init --data {cfg.data_dir}` first, "
            f"or point --config at the gateway.toml of an initialised data folder")
    logs.setup(cfg.log.level, cfg.log.format)
    try:
        # uvloop: the event loop's own overhead per datagram and per pipe message is a
        # large share of the ingest CPU (docs/benchmarks.md); it also reads several
        # queued datagrams per wake-up, so they reach the writer as one group.
        uvloop.run(serve(cfg))
    except KeyboardInterrupt:
        pass
    return 0


def _service_reachable(cfg):
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(cfg.http.bind, cfg.http.bind)
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{cfg.http.port}/"
    try:
        with urllib.request.urlopen(url + "healthz", timeout=0.5) as r:
            return r.status == 200, url
    except OSError:
        return False, url


def _ago(ms, now_ms):
    if ms is None:
        return "never"
    return units.ago((now_ms - ms) // 1000)


def _counts(by_reason):
    return ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items()))


def cmd_status(args):
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        snap = status.collect(conn, cfg.db_path, simclock.now_ms(), cfg)
    finally:
        conn.close()
    running, url = _service_reachable(cfg) if cfg.http.port else (False, "-")
    if args.json:
        print(json.dumps(dict(snap.as_json(), service_running=running, status_page=url),
                         indent=2))
        return 0
    tz = cfg.community.tz
    chain = snap.chain
    service = f"running, status page {url}" if running else f"not reachable at {url} (not running?)"
    print(f"gateway:   {service}")
    print(f"database:  {cfg.db_path} ({snap.storage_bytes / 1e6:.1f} MB)")
    if snap.storage_free_bytes is not None:
        short = (" - SHORT: free space, or move [gateway] data_dir"
                 if snap.storage_free_bytes < store.LOW_SPACE_BYTES else "")
        print(f"room:      {snap.storage_free_bytes / 1e6:.1f} MB free, about "
              f"{snap.readings_room:,} readings more{short}")
    print(f"readings:  {snap.readings_total} stored, "
          f"{snap.readings_per_s:.2f}/s over the last minute")
    print(f"chain:     {chain.summary}")
    if chain.last_confirmed_interval is not None:
        print(f"           interval {chain.last_confirmed_interval} is "
              f"{units.interval_span(chain.last_confirmed_interval, chain.interval_s, tz)},"
              f" tx {chain.last_confirmed_tx}")
    for f in chain.failed:
        print(f"           FAILED interval {f['interval']}: {f['error']} "
              f"(wattshare chain retry --interval {f['interval']})")
    if chain.gaps:
        from gateway.chain.batcher import gap_reason

        g = chain.gaps[0]
        print(f"           {len(chain.gaps)} gaps in the last {status.RECENT_INTERVALS} "
              f"intervals; latest: {g['label']} in "
              f"{units.interval_span(g['interval'], chain.interval_s, tz)}: "
              f"{gap_reason(g['reason'])}")
    rejects = _counts(snap.rejects) or "none"
    print(f"rejects:   {rejects}")
    print(f"devices:   {len(snap.devices)}")
    for d in snap.devices:
        rejects = ", REJECTS " + _counts(d.rejects) if d.rejects else ""
        seen = ("STALE, " if d.stale else "") + _ago(d.last_seen_ms, snap.now_ms)
        on_chain = "" if not chain.contract else (
            f", meter {d.meter_index} settled to {d.last_settled_interval}"
            if d.meter_index is not None else ", not on chain")
        print(f"  {d.id}  {d.label[:20]:20} {d.model:11} {d.status:7} last seen "
              f"{seen:14} readings {d.readings}, faults {d.faults}{on_chain}{rejects}")
    return 0


# -- device --------------------------------------------------------------------------


def _utc(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _invite_json(invite, now):
    return {"invite": invite.id, "label": invite.label, "owner": invite.owner,
            "model": invite.model, "ct_rating_a": invite.ct_rating_a,
            "created": _utc(invite.created_at), "expires_at": invite.expires_at,
            "expires": _utc(invite.expires_at), "state": invite.state(now),
            "device": invite.device.hex() if invite.device else None}


def cmd_device_invites(args):
    from gateway import enrolment

    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        now = int(simclock.now())
        invites = enrolment.list_invites(conn, now, ended=args.all)
    finally:
        conn.close()
    if args.json:
        print(json.dumps([_invite_json(i, now) for i in invites], indent=2))
        return 0
    if not invites:
        print("no open invites" + ("" if args.all else " (--all: used and expired ones too)"))
        return 0
    print(f"{'id':>4}  {'state':<8} {'label':<22} {'model':<9} {'CT':>6}  expires / enrolled")
    for i in invites:
        state = i.state(now)
        ct = f"{i.ct_rating_a:g} A" if i.ct_rating_a else "model"
        when = (f"device {i.device.hex()} at {_utc(i.used_at)}" if state == "used"
                else _utc(i.expires_at))
        print(f"{i.id:>4}  {state:<8} {i.label[:22]:<22} {i.model or 'any':<9} {ct:>6}  {when}")
    return 0


def cmd_device_cancel_invite(args):
    from gateway import enrolment

    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        invite = enrolment.cancel_invite(conn, args.invite)
    finally:
        conn.close()
    print(f"invite {invite.id} ({invite.label}) cancelled: its code no longer enrols a meter")
    return 0


def cmd_device_invite(args):
    from wattcore.enrolment import format_code

    from gateway import enrolment

    ttl = enrolment.parse_ttl(args.expires)
    owner = registry.parse_owner(args.owner)
    model = registry.parse_model(args.meter) if args.meter else None
    if args.ct_rating is not None and not args.ct_rating > 0:
        raise InvalidDevice(f"--ct-rating {args.ct_rating:g}: must be above 0 A")
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        code, invite = enrolment.create_invite(conn, args.label, owner, ttl, model,
                                               args.ct_rating)
    finally:
        conn.close()
    shown = format_code(code)
    if args.json:
        print(json.dumps({"code": shown, "invite": invite.id, "label": invite.label,
                          "owner": invite.owner, "model": invite.model,
                          "ct_rating_a": invite.ct_rating_a, "expires_at": invite.expires_at,
                          "expires": _utc(invite.expires_at)}, indent=2))
        return 0
    model_text = invite.model or "the model the meter reports"
    ct = f"CT {invite.ct_rating_a:g} A" if invite.ct_rating_a else "the model's CT rating"
    print(f"code:    {shown}")
    print(f"for:     {invite.label} (owner {invite.owner}, {model_text}, {ct})")
    print(f"expires: {_utc(invite.expires_at)} ({args.expires}); works once")
    print("This code is shown only now. Give it to the installer: "
          f"wattshare meter provision ... --code {shown}")
    return 0


def cmd_device_add(args):
    device_id = registry.parse_device_id(args.id)
    pubkey = registry.parse_pubkey(args.pubkey)
    owner = registry.parse_owner(args.owner)
    model = registry.parse_model(args.model)
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        d = registry.add_device(conn, device_id, pubkey, model, owner, args.label,
                                args.ct_rating_a)
    finally:
        conn.close()
    print(f"added {d.id.hex()} ({d.label}, {d.model}, owner {d.owner}, "
          f"CT {d.ct_rating_a:g} A)")
    return 0


IMPORT_COLUMNS = ("id", "pubkey", "model", "owner", "label")
IMPORT_OPTIONAL = ("ct_rating_a",)


def cmd_device_import(args):
    import csv

    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidDevice(f"{args.file}: cannot read: {e}") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise InvalidDevice(f"{args.file}: empty; the first line names the columns "
                            f"{', '.join(IMPORT_COLUMNS + IMPORT_OPTIONAL)}")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in IMPORT_COLUMNS if c not in header]
    unknown = [h for h in header if h not in IMPORT_COLUMNS + IMPORT_OPTIONAL]
    if missing or unknown or len(set(header)) != len(header):
        raise InvalidDevice(
            f"{args.file} line 1: columns {', '.join(header) or '(none)'}; expected "
            f"{', '.join(IMPORT_COLUMNS)} and optionally {', '.join(IMPORT_OPTIONAL)}, "
            "each once")
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    added = 0
    try:
        with store.immediate(conn):
            for number, row in enumerate(rows[1:], start=2):
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                if len(row) != len(header):
                    raise InvalidDevice(f"{args.file} line {number}: {len(row)} values for "
                                        f"{len(header)} columns")
                values = {h: v.strip() for h, v in zip(header, row, strict=True)}
                try:
                    rating = values.get("ct_rating_a") or None
                    if rating is not None:
                        try:
                            rating = float(rating)
                        except ValueError:
                            raise InvalidDevice(f"ct_rating_a {rating!r}: not a number") from None
                    registry.add_device(
                        conn, registry.parse_device_id(values["id"]),
                        registry.parse_pubkey(values["pubkey"]),
                        registry.parse_model(values["model"]),
                        registry.parse_owner(values["owner"]), values["label"], rating)
                except GatewayError as e:
                    raise type(e)(f"{args.file} line {number}: {e}; nothing was added") from None
                added += 1
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"added": added}))
    else:
        print(f"added {added} devices; the running gateway accepts their readings within a "
              "second")
    return 0


def cmd_device_list(args):
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        devices = registry.list_devices(conn)
    finally:
        conn.close()
    if args.json:
        print(json.dumps([status.device_json(d) for d in devices], indent=2))
        return 0
    if not devices:
        print("no devices registered (wattshare device add ...)")
        return 0
    print(f"{'ID':16}  {'LABEL':20} {'MODEL':11} {'STATUS':7} {'CT A':>6}  OWNER")
    for d in devices:
        print(f"{d.id.hex()}  {d.label[:20]:20} {d.model:11} {d.status:7} "
              f"{d.ct_rating_a:6g}  {d.owner}")
    return 0


def cmd_device_show(args):
    device_id = registry.parse_device_id(args.id)
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        d = registry.get_device(conn, device_id)
        snap = status.collect(conn, cfg.db_path, simclock.now_ms(), cfg)
        report = status.device_report(conn, device_id, snap.now_ms)
    finally:
        conn.close()
    s = next(x for x in snap.devices if x.id == d.id.hex())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"id:          {d.id.hex()}")
    print(f"label:       {d.label}")
    print(f"model:       {d.model} (CT {d.ct_rating_a:g} A, "
          f"{registry.models()[d.model].phases} phase(s))")
    print(f"owner:       {d.owner}")
    print(f"public key:  {d.pubkey.hex()}")
    print("status:      {}{}".format(d.status, " since {}".format(time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(d.revoked_at))) if d.revoked_at else ""))
    print("added:       {}".format(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d.added_at))))
    print(f"last seen:   {'STALE, ' if s.stale else ''}{_ago(s.last_seen_ms, snap.now_ms)}")
    if snap.chain.contract:
        print("on chain:    " + (f"meter {s.meter_index}, last settled interval "
                                 f"{s.last_settled_interval}" if s.meter_index is not None
                                 else "not registered (wattshare community add-meter)"))
    print(f"readings:    {s.readings} (last seq {s.last_seq}, t {s.last_t}, p {s.last_p} W, "
          f"import {s.last_ei} Wh, export {s.last_ee} Wh)")
    flags = f" (last: {', '.join(s.last_fault_flags)})" if s.last_fault_flags else ""
    print(f"faults:      {s.faults}{flags}")
    print(f"rejects:     {_counts(s.rejects) or 'none'}")
    enrolled = report["enrolment"]
    print("enrolled:    " + (f"yes, with invite {enrolled['invite']} at {_utc(enrolled['at'])}"
                             if enrolled else "no (registered with `device add`)"))
    last = report["last_reading"]
    if last is not None:
        check = "signature verified" if last["signature_valid"] else "SIGNATURE DOES NOT VERIFY"
        print(f"last reading: seq {last['seq']} at {_utc(last['t'])}, {check}")
    _print_commissioning(report["commissioning"])
    return 0


def _kwh(wh):
    return "-" if wh is None else f"{wh / 1000:.3f}"


def _device_by_name(conn, text):
    """A device id from a device id (hex), or a member's label or meter index."""
    try:
        device_id = registry.parse_device_id(text)
    except GatewayError:
        from gateway import community

        return bytes.fromhex(community.Members(conn).find(text)["device"])
    registry.get_device(conn, device_id)
    return device_id


def cmd_device_readings(args):
    if args.limit < 0:
        raise ConfigError(f"--limit {args.limit}: must be 0 (all) or more")
    cfg = gwconfig.load(args.config)
    tz = cfg.community.tz
    span = units.day_bounds(args.date, tz) if args.date else None
    conn = _open_db(cfg)
    try:
        device_id = _device_by_name(conn, args.id)
        label = registry.get_device(conn, device_id).label
        rows = status.device_readings(conn, device_id, args.limit, args.after_seq, span)
    finally:
        conn.close()
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=1))
        return 0
    if not rows:
        print(f"no readings stored for {device_id.hex()}")
        return 0
    print(f"{label} ({device_id.hex()}), newest last:")
    print(f"{'ID':>9} {'SEQ':>7}  {'TIME':23}  {'POWER W':>8} {'IMPORT kWh':>12} "
          f"{'EXPORT kWh':>12}  {'ON CHAIN':22} FLAGS")
    for r in rows:
        power = "-" if r.p is None else str(r.p)
        chain = f"{r.interval} {r.on_chain}" if r.interval is not None else "not yet"
        print(f"{r.id:>9} {r.seq:>7}  {units.local_time(r.t, tz, True):23}  {power:>8} "
              f"{_kwh(r.ei):>12} {_kwh(r.ee):>12}  {chain:22} {' '.join(r.flags)}")
    rid = rows[-1].id
    print(f"prove one: wattshare export-proof --reading {rid} -o reading-{rid}.json, then "
          f"wattshare verify --bundle reading-{rid}.json --rpc URL (URL: wattshare chain "
          "status)")
    return 0


def _print_commissioning(c):
    if c is None:
        print("commissioning: no record (wattshare meter provision sends one)")
        return
    record = c["record"]
    check = "signed by the device" if c["signature_valid"] else "SIGNATURE DOES NOT VERIFY"
    print(f"commissioning: {_utc(c['received_ms'] // 1000)} by {record.get('installer')}, "
          f"{check}")
    for key in ("model", "serial", "site"):
        if key in record:
            print(f"  {key}: {record[key]}")
    for name, values in record["checks"].items():
        rest = ", ".join(f"{k} {v}" for k, v in values.items() if k != "ok")
        print(f"  {'ok    ' if values['ok'] else 'FAILED'} {name}" + (f": {rest}" if rest else ""))


def cmd_device_revoke(args):
    device_id = registry.parse_device_id(args.id)
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        d = registry.revoke_device(conn, device_id)
    finally:
        conn.close()
    print(f"revoked {d.id.hex()} ({d.label}); "
          "the running gateway refuses its readings within a second")
    return 0

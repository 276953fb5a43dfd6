"""The handlers of ``wattshare chain/community/verify/export-*`` (see
:mod:`gateway.chain.cli`, which registers them and imports this module only when one of
them runs: web3 and eth-account take seconds to import on a Pi).

Keys: the gateway signs submissions with its keystore (``wattshare gateway init``); the
community admin signs deployments and registry changes with ``--admin-key-file`` (a file
holding the hex private key), which defaults to anvil's public development account 0 when
``[chain] rpc_url = "anvil"``.
"""

import json
import logging
import signal
import threading
from pathlib import Path

from eth_account import Account
from eth_utils import is_address, to_checksum_address

from gateway import community, keystore, logs, registry, simclock, units
from gateway import config as gwconfig
from gateway.chain import allocations, batcher, bundle, deploy, intervals, ledger, node, outbox, rpc
from gateway.chain.errors import BundleError, ChainError, RpcError
from gateway.cli import _open_db
from gateway.errors import ConfigError, GatewayError

log = logging.getLogger("wattshare.chain")


def _deployment_path(cfg):
    return cfg.data_dir / deploy.DEPLOYMENT_NAME


def _deployment(cfg):
    d = deploy.Deployment.load(_deployment_path(cfg))
    if cfg.chain.contract and to_checksum_address(cfg.chain.contract) != d.settlement:
        raise ConfigError(f"{cfg.path}: [chain] contract = {cfg.chain.contract} differs from"
                          f" {_deployment_path(cfg)} ({d.settlement})")
    return d


def _contract(cfg):
    if not cfg.chain.contract:
        raise ConfigError(f"{cfg.path}: [chain] contract is empty: run `wattshare chain "
                          "deploy` or set the settlement address")
    return to_checksum_address(cfg.chain.contract)


def _read_key(path, what):
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
        key = bytes.fromhex(text.removeprefix("0x"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} key: {e}") from None
    except ValueError:
        raise ConfigError(f"{path}: the {what} key must be 32 bytes of hex") from None
    if len(key) != 32:
        raise ConfigError(f"{path}: the {what} key must be 32 bytes of hex, got {len(key)}")
    return key


def _admin_key(cfg, args):
    if args.admin_key_file is not None:
        return _read_key(args.admin_key_file, "admin")
    if cfg.chain.rpc_url == "anvil":
        return node.anvil_dev_key(0)
    raise ConfigError("--admin-key-file is required with [chain] rpc_url = "
                      f"{cfg.chain.rpc_url} (no development accounts there)")


def _device(conn, text):
    """A meter named by index, device id (hex) or label -> (device id, index or None)."""
    mapping = batcher.meter_map(conn)
    if text.isdigit() and int(text) in mapping.values():
        index = int(text)
        return next(d for d, i in mapping.items() if i == index), index
    try:
        device_id = registry.parse_device_id(text)
    except GatewayError:
        labels = [d for d in registry.list_devices(conn) if d.label == text]
        if len(labels) != 1:
            raise ConfigError(f"meter {text!r}: not a mapped index, device id or unique label"
                              ) from None
        device_id = labels[0].id
    registry.get_device(conn, device_id)
    return device_id, mapping.get(device_id)


# ---- chain


def cmd_deploy(args):
    cfg = gwconfig.load(args.config)
    path = _deployment_path(cfg)
    if path.exists() and not args.force:
        d = deploy.Deployment.load(path)
        raise ChainError(f"{path}: already deployed (settlement {d.settlement}); pass --force "
                         "to deploy a new community")
    gateway = keystore.address(cfg.keystore_path)
    admin_key = _admin_key(cfg, args)
    with node.chain_port(cfg) as port:
        d = deploy.deploy_community(
            port, admin_key, [gateway], interval_s=cfg.chain.interval_s,
            settle_delay_s=args.settle_delay, price=args.price,
            fund_gateways_wei=deploy.GATEWAY_FUNDING_WEI if cfg.chain.rpc_url == "anvil" else 0)
    d.save(path)
    deploy.write_contract_to_config(cfg.path, d.settlement)
    print(f"chain id {d.chain_id}, block {d.block_number}")
    print(f"token:      {d.token}")
    print(f"registry:   {d.registry}")
    print(f"settlement: {d.settlement}  (written to {cfg.path} [chain] contract)")
    print(f"admin:      {d.admin}")
    print(f"gateway:    {gateway} (authorised)")
    print(f"record:     {path}")
    return 0


def cmd_status(args):
    cfg = gwconfig.load(args.config)
    out = {"rpc_url": cfg.chain.rpc_url, "chain_id": cfg.chain.chain_id,
           "contract": cfg.chain.contract or None}
    gateway = keystore.address(cfg.keystore_path)
    out["gateway"] = gateway
    conn = _open_db(cfg)
    try:
        if cfg.chain.contract:
            contract = _contract(cfg)
            out["outbox"] = outbox.counts(conn, contract)
            row = conn.execute("SELECT max(interval) FROM chain_outbox WHERE contract = ? AND "
                               "state = 'confirmed'", (contract,)).fetchone()
            out["last_confirmed_interval"] = row[0]
            out["failed"] = [{"interval": k, "error": e} for k, e in conn.execute(
                "SELECT interval, error FROM chain_outbox WHERE contract = ? AND "
                "state = 'failed' ORDER BY interval", (contract,))]
        out["mapped_meters"] = len(batcher.meter_map(conn))
    finally:
        conn.close()
    try:
        with node.chain_port(cfg) as port:
            out["node"] = {"reachable": True, "block": port.get_block_number(),
                           "url": port.url,
                           "embedded_while": None if cfg.chain.rpc_url != "anvil" else (
                               "this command" if getattr(port, "anvil", None) else
                               "wattshare chain run (or chain node) runs")}
            out["gateway_balance_wei"] = int(port.request("eth_getBalance",
                                                          [gateway, "latest"]), 16)
            if cfg.chain.contract:
                d = deploy.Deployment.load(_deployment_path(cfg)) \
                    if _deployment_path(cfg).exists() else None
                if d is not None:
                    out["gateway_authorised"] = deploy.view(
                        port, d.registry, "is_gateway(address)", [gateway], ["bool"])
                conn = _open_db(cfg)
                try:
                    out["agreement"] = outbox.agreement(
                        conn, port, _contract(cfg), gateway,
                        confirmations=cfg.chain.confirmations,
                        from_block=d.block_number if d is not None else 0)
                except RpcError as e:  # e.g. a public node that limits eth_getLogs ranges
                    out["agreement"] = {"error": str(e)}
                finally:
                    conn.close()
    except ChainError as e:
        out["node"] = {"reachable": False, "error": str(e)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"node:      {cfg.chain.rpc_url} chain id {cfg.chain.chain_id}: "
          + (f"block {out['node']['block']}" if out["node"]["reachable"]
             else "UNREACHABLE " + out["node"]["error"]))
    if out["node"]["reachable"]:
        note = out["node"]["embedded_while"]
        print(f"rpc:       {out['node']['url']}" + (
            "" if note is None else " (the embedded anvil; it stopped with this command: "
            "`wattshare chain node` keeps it running)" if note == "this command"
            else f" (the embedded anvil, while {note})"))
    print(f"contract:  {out['contract'] or 'not deployed (wattshare chain deploy)'}")
    print(f"gateway:   {gateway}"
          + (f", balance {out['gateway_balance_wei'] / 1e18:.4f} ETH"
             if "gateway_balance_wei" in out else "")
          + ("" if out.get("gateway_authorised", True) else ", NOT AUTHORISED"))
    print(f"meters:    {out['mapped_meters']} mapped to on-chain indices")
    if "outbox" in out:
        states = ", ".join(f"{k} {v}" for k, v in sorted(out["outbox"].items())) or "empty"
        print(f"outbox:    {states}; last confirmed interval "
              f"{out['last_confirmed_interval']}")
        for f in out["failed"]:
            print(f"  FAILED interval {f['interval']}: {f['error']}")
    if "agreement" in out:
        a = out["agreement"]
        if "error" in a:
            print(f"chain:     not compared with the outbox: {a['error']}")
        elif a["agree"]:
            print(f"chain:     agrees with the outbox at block {a['block']}: "
                  f"{a['confirmed']} intervals submitted and confirmed")
        else:
            print(f"chain:     DISAGREES with the outbox at block {a['block']}: "
                  f"{a['confirmed']} confirmed, {a['on_chain']} on chain")
            for what, label in (("missing_on_chain", "confirmed but not on chain"),
                                ("other_root", "on chain with another root"),
                                ("on_chain_not_confirmed", "on chain, not confirmed yet")):
                if a[what]:
                    print(f"  {label}: {', '.join(map(str, a[what]))}")
    return 0


def cmd_run(args):
    cfg = gwconfig.load(args.config)
    simclock.active()  # a malformed $WATTSHARE_SIM_CLOCK stops here, named
    contract = _contract(cfg)
    key = keystore.unlock(cfg.keystore_path, keystore.read_passphrase(args.passphrase_file))
    if not logging.getLogger().handlers:  # a CLI process (not a host that set up logging)
        logs.setup(cfg.log.level, cfg.log.format)
    conn = _open_db(cfg)
    stopping = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (systemd stop): end after the current step, stop the node cleanly
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    try:
        with node.Supervisor(cfg, publish_url=not args.once) as sup:
            gateway = Account.from_key(key).address
            view = batcher.ChainView(None, contract, gateway)
            b = batcher.Batcher(conn, contract, view, length=cfg.chain.interval_s,
                                grace_s=cfg.chain.grace_s, clock=simclock.now,
                                batch_intervals=args.batch_intervals
                                if args.batch_intervals is not None
                                else cfg.chain.batch_intervals)
            since = b.since(cfg.chain.backfill_intervals)
            box = outbox.Outbox(
                conn, None, key, contract, confirmations=cfg.chain.confirmations,
                rebroadcast_s=cfg.chain.rebroadcast_s, clock=simclock.now,
                durable=sup.durable,
                split=lambda interval, part: batcher.split_row(
                    conn, contract, interval, part, length=cfg.chain.interval_s))
            tz, length = cfg.community.tz, cfg.chain.interval_s
            labels = {d.id.hex(): d.label for d in registry.list_devices(conn)}
            did_something = False
            while not stopping.is_set():
                changed = {}
                built = []
                port = sup.port()
                if port is None and args.once:
                    raise sup.last_error
                if port is not None:
                    box.port = view.port = port
                    try:
                        if cfg.chain.rpc_url == "anvil":
                            node.follow_sim_clock(port)
                        for _ in range(BATCHES_PER_STEP):
                            batch = b.build_due(since)
                            if not batch:
                                break
                            built += batch
                            for row in batch:
                                print(_built_line(row, length, tz), flush=True)
                                for line in _gap_lines(row, labels):
                                    print(line, flush=True)
                        changed = box.step()
                    except ChainError as e:  # the node's trouble: the supervisor's call
                        if args.once:
                            raise
                        sup.failed(e)
                    else:
                        sup.ok()
                for name, state in sorted(changed.items(), key=lambda kv: _order(kv[0])):
                    print(f"{_row_name(conn, contract, name)}: {state}", flush=True)
                did_something = did_something or bool(changed) or bool(built)
                if args.once and not changed and not built:
                    if not did_something:
                        k, due = b.next_due()
                        waiting = sum(n for state, n in outbox.counts(conn, contract).items()
                                      if state in outbox.OPEN)
                        print((f"{waiting} submission(s) waiting for the chain; "
                               if waiting else "") +
                              f"nothing due until {units.local_time(due, tz)}: interval {k} "
                              f"({units.interval_span(k, length, tz)}) is submitted once "
                              f"its end boundary's signed readings are in "
                              f"({intervals.ANCHOR_DELAY + cfg.chain.grace_s} s after it "
                              "ends)", flush=True)
                    break
                if not args.once:
                    stopping.wait(sup.wait_s(cfg.chain.poll_s))
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        conn.close()
    return 0


def cmd_node(args):
    """Run the embedded node in the foreground (for ``verify --bundle ... --rpc``)."""
    cfg = gwconfig.load(args.config)
    if cfg.chain.rpc_url != "anvil":
        print(f"rpc: {cfg.chain.rpc_url} (the configured node; nothing to run here)")
        return 0
    live = node.live_port(cfg)
    if live is not None:
        print(f"rpc: {live.url} (the embedded anvil, already running)", flush=True)
        return 0
    stopping = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    try:
        # the same supervision as `chain run`: published in anvil.url, restarted if it
        # dies, its state written when it stops
        with node.Supervisor(cfg, publish_url=True) as sup:
            port = sup.port()
            if port is None:
                raise sup.last_error
            print(f"rpc: {port.url} (the embedded anvil of {cfg.data_dir}; Ctrl-C or "
                  "SIGTERM stops it)", flush=True)
            while not stopping.is_set():
                sup.port()
                stopping.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


BATCHES_PER_STEP = 8  # batches built per loop of `chain run` (a backlog comes in steps)


def _order(name):
    return name if isinstance(name, tuple) else (name, 0)


def _row_name(conn, contract, name):
    """How `chain run` names an outbox row: its intervals, or the signed readings that
    go before them."""
    interval, part = _order(name)
    if part < 0:
        return f"signed readings before interval {interval} ({-part})"
    row = conn.execute("SELECT intervals FROM chain_outbox WHERE contract = ? AND "
                       "interval = ? AND part = 0", (contract, interval)).fetchone()
    count = row[0] if row else 1
    return f"interval {interval}" if count == 1 else \
        f"intervals {interval}-{interval + count - 1}"


def _built_line(row, length, tz):
    """What `chain run` says of a built row (intervals in local time)."""
    last = row.interval + max(row.intervals, 1) - 1
    span = units.interval_span(row.interval, length, tz) if row.intervals <= 1 else \
        f"{units.interval_span(row.interval, length, tz)} to " \
        f"{units.interval_span(last, length, tz)}"
    if not row.intervals:
        return f"built {row.anchors} signed readings to send before interval {row.interval}"
    what = f"intervals {row.interval}-{last}" if row.intervals > 1 else \
        f"interval {row.interval}"
    meters = len({m for totals in row.totals for m, *_ in totals})
    gaps = sum(len(g) for g in row.gaps.values())
    return (f"built {what} ({span}): {row.leaves} readings, {row.anchors} signed boundary "
            f"readings, {meters} meters, {gaps} gaps")


def _gap_lines(row, labels):
    """One line per meter and reason: the intervals it was left out of, and why."""
    out = []
    for dev, per in sorted(row.gaps.items()):
        runs = []  # [first, last, why]
        for k, why in sorted((int(k), why) for k, why in per.items()):
            if runs and runs[-1][1] == k - 1 and runs[-1][2] == why:
                runs[-1][1] = k
            else:
                runs.append([k, k, why])
        for first, last, why in runs:
            which = f"interval {first}" if first == last else f"intervals {first}-{last}"
            out.append(f"  gap: {labels.get(dev, dev)} left out of {which}: "
                       f"{batcher.gap_reason(why)}")
    return out


def cmd_retry(args):
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        if not outbox.retry(conn, _contract(cfg), args.interval):
            raise ChainError(f"interval {args.interval} is not a failed outbox row")
    finally:
        conn.close()
    print(f"interval {args.interval} will be built and submitted again by "
          "`wattshare chain run`")
    return 0


# ---- community


def cmd_add_gateway(args):
    cfg = gwconfig.load(args.config)
    if not is_address(args.address):
        raise ConfigError(f"{args.address!r} is not an address")
    d = _deployment(cfg)
    with node.chain_port(cfg) as port:
        r = deploy.add_gateway(port, _admin_key(cfg, args), d.registry, args.address)
    print(f"gateway {to_checksum_address(args.address)} "
          + ("authorised" if r else "was already authorised"))
    return 0


def cmd_add_meter(args):
    cfg = gwconfig.load(args.config)
    d = _deployment(cfg)
    device_ids = [registry.parse_device_id(text) for text in args.device]
    if args.index is not None and len(device_ids) != 1:
        raise ConfigError("--index links one device: give a single --device with it")
    gateway = keystore.address(cfg.keystore_path)
    conn = _open_db(cfg)
    try:
        devices = [registry.get_device(conn, device_id) for device_id in device_ids]
        with node.chain_port(cfg) as port:
            for device_id, dev in zip(device_ids, devices, strict=True):
                if args.index is not None:
                    on_chain = deploy.meter_index(port, d.registry, device_id)
                    if on_chain != args.index:
                        raise ChainError(f"device {device_id.hex()} is meter "
                                         f"{on_chain or 'none'} in the registry, not "
                                         f"{args.index}")
                    index = args.index
                else:
                    index = deploy.register_meter(port, _admin_key(cfg, args), d.registry,
                                                  device_id, dev.pubkey, dev.owner, gateway)
                batcher.set_meter_index(conn, device_id, index)
                print(f"device {device_id.hex()} ({dev.label}) is meter {index}, owner "
                      f"{dev.owner}, gateway {gateway}", flush=True)
    finally:
        conn.close()
    return 0


def cmd_set_price(args):
    cfg = gwconfig.load(args.config)
    with node.chain_port(cfg) as port:
        deploy.set_price(port, _admin_key(cfg, args), _contract(cfg), args.price)
    print(f"P2P price set to {args.price} token units per Wh")
    return 0


def _members(conn, text, weighted):
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if weighted and not weight.isdigit():
            raise ConfigError(f"{part!r}: expected METER=BASIS_POINTS")
        _, index = _device(conn, name)
        if index is None:
            raise ConfigError(f"meter {name!r} has no on-chain index (community add-meter)")
        out.append((index, int(weight) if weighted else 0))
    return out


def cmd_producer_key(args):
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        _, producer = _device(conn, args.meter)
        if producer is None:
            raise ConfigError(f"meter {args.meter!r} has no on-chain index (community add-meter)")
        for kind, weighted in (("static", True), ("percent", True), ("prorata", False),
                               ("priority", False)):
            text = getattr(args, kind)
            if text is not None:
                members = _members(conn, text, weighted)
                break
        else:
            kind, members = "none", []
    finally:
        conn.close()
    if args.owner_key_file is not None:
        key = _read_key(args.owner_key_file, "owner")
    elif args.anvil_account is not None and cfg.chain.rpc_url == "anvil":
        key = node.anvil_dev_key(args.anvil_account)
    else:
        raise ConfigError("the producer's owner signs its key: pass --owner-key-file FILE"
                          " (or --anvil-account N on the embedded anvil)")
    with node.chain_port(cfg) as port:
        deploy.set_producer_key(port, key, _contract(cfg), producer, kind,
                                [m for m, _ in members], [w for _, w in members])
    shown = ", ".join(f"{m}={w}" if w else str(m) for m, w in members) or "-"
    print(f"meter {producer}: key {kind} {shown} (set by {Account.from_key(key).address})")
    return 0


def cmd_fund(args):
    cfg = gwconfig.load(args.config)
    d = _deployment(cfg)
    for account in args.account:
        if not is_address(account):
            raise ConfigError(f"--account {account!r} is not an address")
    with node.chain_port(cfg) as port:
        for account in args.account:
            deploy.fund(port, _admin_key(cfg, args), d.token, d.settlement, account,
                        args.amount)
            print(f"deposited {args.amount} token units for {to_checksum_address(account)}",
                  flush=True)
    return 0


def cmd_members(args):
    cfg = gwconfig.load(args.config)
    conn = _open_db(cfg)
    try:
        members = community.Members(conn)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(members.devices, indent=2))
        return 0
    if not members.devices:
        print("no members: register meters with `wattshare device add --label ...`")
        return 0
    print(f"{'METER':>5}  {'NAME':24} {'DEVICE':16}  {'STATUS':7} OWNER")
    for d in members.devices:
        index = str(d["index"]) if d["index"] is not None else "-"
        print(f"{index:>5}  {d['name'][:24]:24} {d['device']:16}  {d['status']:7} {d['owner']}"
              + ("" if d["index"] is not None else
                 "  (not on chain: wattshare community add-meter)"))
    return 0


def cmd_report(args):
    cfg = gwconfig.load(args.config)
    _contract(cfg)
    first_day = args.first or args.last
    last_day = args.last or args.first
    if first_day is None:
        raise ConfigError("give --from DATE and/or --to DATE (YYYY-MM-DD)")
    conn = _open_db(cfg)
    try:
        with node.chain_port(cfg) as port:
            chain = community.ChainView(port, cfg.chain.contract,
                                        community.deployment_block(cfg.data_dir))
            r = community.member_report(conn, cfg, chain, args.member, first_day, last_day)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    t, c = r["text"], cfg.community
    span = first_day if first_day == last_day else f"{first_day} to {last_day}"
    print(f"{r['name']} (meter {r['index']}), {span} ({c.timezone or 'local time'}): "
          f"{r['intervals_settled']} intervals settled")
    print(f"  used      {t['consumed_wh']}: from neighbours {t['direct_received_wh']}"
          + (f" ({t['received_from']})" if r["received_from"] else "")
          + f", from the community pool {t['pool_received_wh']}, from the grid "
          f"{t['grid_import_wh']}")
    print(f"  surplus   {t['produced_wh']}: to its beneficiaries {t['direct_sent_wh']}"
          + (f" ({t['sent_to']})" if r["sent_to"] else "")
          + f", to the community pool {t['pool_sent_wh']}, to the grid {t['grid_export_wh']}")
    print(f"  tokens    earned {t['tokens_earned']}, paid {t['tokens_paid']}, owed (unpaid)"
          f" {t['tokens_owed']}; now: balance {t['account_balance']}, debt "
          f"{t['account_debt']}, receivable {t['account_receivable']}")
    bill = r["bill"]
    print(f"  bill      {units.money(bill['community'], c.currency)} at the community's "
          f"tariffs, {units.money(bill['grid_only'], c.currency)} with the grid alone: saved "
          f"{units.money(bill['saving'], c.currency)}")
    return 0


# ---- proofs and exports


def _port_for(cfg, args):
    if getattr(args, "rpc", None):
        return _nullcontext(_connect_any(args.rpc, cfg))
    return node.chain_port(cfg)


def _connect_any(url, cfg):
    chain_id = cfg.chain.chain_id if cfg is not None else None
    port = rpc.Web3Chain(url, chain_id or 0)
    port.chain_id = port.get_chain_id()
    return port


class _nullcontext:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def _bundle_from_store(cfg, reading_id):
    conn = _open_db(cfg)
    try:
        return bundle.export_bundle(conn, reading_id, cfg.chain.chain_id)
    finally:
        conn.close()


def cmd_verify(args):
    urls = list(args.rpc or [])
    if len(urls) > 2:
        raise ConfigError("--rpc: give one node, or two to compare (got "
                          f"{len(urls)})")
    if args.confirmations is not None and args.confirmations < 1:
        raise ConfigError(f"--confirmations {args.confirmations}: must be 1 or more")
    if args.bundle is not None:
        try:
            data = json.loads(args.bundle.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"{args.bundle}: cannot read the bundle: {e}") from None
        if not urls:
            raise ConfigError("--bundle needs --rpc URL (a node of the bundle's chain; "
                              "twice to compare two nodes)")
        bundle.check_fields(data)  # a malformed bundle is refused before any node is asked
        cfg = None
        confirmations = args.confirmations or 1
    else:
        cfg = gwconfig.load(args.config)
        data = _bundle_from_store(cfg, args.reading)
        confirmations = args.confirmations or cfg.chain.confirmations
    second = _connect_any(urls[1], cfg) if len(urls) == 2 else None
    if urls:
        port_cm = _nullcontext(_connect_any(urls[0], cfg))
    else:
        port_cm = node.chain_port(cfg)
    with port_cm as port:
        report = bundle.verify_bundle(data, port, confirmations, second)
    print(bundle.format_report(report, cfg.community.tz if cfg is not None else None))
    return 0 if report.ok else 1


def cmd_export_proof(args):
    cfg = gwconfig.load(args.config)
    data = _bundle_from_store(cfg, args.reading)
    args.output.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    last = data["interval"] + data["intervals"] - 1
    print(f"wrote {args.output}: reading {args.reading}, leaf {data['leaf_index']} of root "
          f"0x{data['root'][:16]}.. (submission of intervals {data['interval']}..{last}), "
          f"block {data['block_number']}")
    return 0


def cmd_export_allocations(args):
    cfg = gwconfig.load(args.config)
    if args.interval is not None:
        first = last = args.interval
    elif args.first is not None and args.last is not None:
        first, last = args.first, args.last
        if first > last:
            raise ConfigError(f"--from {first} is after --to {last}: give the first "
                              "interval, then the last (--from 3 --to 5)")
    else:
        raise ConfigError("give --interval N, or --from N and --to N")
    contract = _contract(cfg)
    d = _deployment(cfg) if _deployment_path(cfg).exists() else None
    with _port_for(cfg, args) as port:
        rows = allocations.allocation_rows(port, contract, first, last,
                                           d.block_number if d else 0)
        symbol, decimals = ledger.token_info(
            port, ledger.contract_addresses(port, contract)["token"])
    conn = _open_db(cfg)
    try:
        members = community.Members(conn)
    finally:
        conn.close()
    allocations.add_readable(
        rows, members.name,
        units.Token(symbol, decimals), cfg.chain.interval_s, cfg.community.tz)
    allocations.write_csv(rows, args.output)
    print(f"wrote {args.output}: {len(rows)} allocations, intervals {first}..{last}")
    return 0

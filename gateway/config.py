"""Gateway configuration: ``gateway.toml``, validated into frozen dataclasses.

Every key has a default, so a file only needs the keys an operator changes; unknown
sections and keys are refused. Errors name the file, the key, the value and what is
allowed, in the format of every TOML file the project reads (:mod:`tools.toml_schema`)::

    /var/lib/wattshare/gateway.toml: coap.port = 70000: must be an integer 0..65535
"""

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError
from tools import toml_schema

CONFIG_NAME = "gateway.toml"
DB_NAME = "gateway.sqlite3"
DEFAULT_DATA_DIR = "/var/lib/wattshare"
ENV_CONFIG = "WATTSHARE_CONFIG"
ENV_DATA = "WATTSHARE_DATA"


class _Int:
    def __init__(self, default, lo, hi):
        self.default, self.lo, self.hi = default, lo, hi

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            raise ValueError(f"must be an integer {self.lo}..{self.hi}")
        return value

    def toml(self, value):
        return str(value)


class _Number(_Int):
    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number {self.lo:g}..{self.hi:g}")
        if not self.lo <= value <= self.hi:
            raise ValueError(f"must be a number {self.lo:g}..{self.hi:g}")
        return float(value)

    def toml(self, value):
        return repr(float(value))


class _Choice:
    def __init__(self, default, allowed):
        self.default, self.allowed = default, allowed

    def check(self, value):
        if value not in self.allowed:
            allowed = ", ".join(f'"{a}"' for a in self.allowed)
            raise ValueError(f"must be one of {allowed}")
        return value

    def toml(self, value):
        return f'"{value}"'


class _IntChoice(_Choice):
    def check(self, value):
        if isinstance(value, bool) or value not in self.allowed:
            raise ValueError("must be one of " + ", ".join(str(a) for a in self.allowed))
        return value

    def toml(self, value):
        return str(value)


class _Text:
    def __init__(self, default, what="a string"):
        self.default, self.what = default, what

    def check(self, value):
        if not isinstance(value, str):
            raise ValueError(f"must be {self.what}")
        return value

    def toml(self, value):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'


class _Address(_Text):
    def check(self, value):
        if not isinstance(value, str):
            raise ValueError("must be an IP address such as \"::\", \"0.0.0.0\" or \"127.0.0.1\"")
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                "must be an IP address such as \"::\", \"0.0.0.0\" or \"127.0.0.1\""
            ) from None
        return value


class _Workers:
    default = "auto"

    def check(self, value):
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
            raise ValueError('must be "auto" or an integer 0..64 (0 = all in the gateway process)')
        return value

    def toml(self, value):
        return '"auto"' if value == "auto" else str(value)


class _RpcUrl(_Text):
    def check(self, value):
        if not isinstance(value, str) or not (
            value == "anvil" or value.startswith(("http://", "https://", "ws://", "wss://"))
        ):
            raise ValueError('must be "anvil" (the embedded local node) or an http(s):// URL')
        return value


class _EvmAddressOrEmpty(_Text):
    def check(self, value):
        ok = isinstance(value, str) and (
            value == ""
            or (len(value) == 42 and value[:2] == "0x" and all(c in _HEX for c in value[2:]))
        )
        if not ok:
            raise ValueError('must be "" (not deployed yet) or a 0x-prefixed 20-byte address')
        return value


class _TimeZone(_Text):
    def check(self, value):
        from gateway import units

        if not isinstance(value, str):
            raise ValueError('must be an IANA time zone such as "Europe/Paris", or "" '
                             "(this machine's local time)")
        try:
            units.zone(value)
        except ConfigError:
            raise ValueError('unknown time zone: an IANA name such as "Europe/Paris" or '
                             "\"UTC\", or \"\" (this machine's local time)") from None
        return value


class _Currency(_Text):
    def check(self, value):
        if not (isinstance(value, str) and 1 <= len(value) <= 8 and value.strip() == value):
            raise ValueError('must be a short currency name such as "EUR" (1-8 characters)')
        return value


_HEX = set("0123456789abcdefABCDEF")
FRONT_ENDS = ("lean", "aiocoap")  # gateway.coap_lean, gateway.coap_server
_DAY = 86400

# section -> key -> (field spec, comment written by `gateway init`)
SCHEMA = {
    "gateway": {
        "data_dir": (_Text(".", "a directory path"),
                     "database, keystore; relative paths are relative to this file"),
    },
    "coap": {
        "bind": (_Address("::"),
                 'address the meters send to; "::" = every IPv4 and IPv6 address'),
        "port": (_Int(5683, 0, 65535), "CoAP over UDP (0 = any free port, for tests)"),
        "receive_buffer_bytes": (_Int(4 << 20, 1 << 16, 1 << 28),
                                 "SO_RCVBUF; the kernel caps it at net.core.rmem_max"),
        "front_end": (_Choice("lean", FRONT_ENDS),
                      '"lean" (own UDP layer, fast) or "aiocoap" (docs/gateway.md)'),
        "max_datagrams_per_source": (_Int(200, 0, 1 << 20),
                                     "per second and source address, more are dropped "
                                     "unanswered (lean front end; 0 = no limit; a "
                                     "simulated clock's seconds)"),
    },
    "ingest": {
        "max_future_skew_s": (_Int(300, 0, 86400),
                              "refuse readings stamped further ahead of the gateway clock"),
        "max_age_s": (_Int(30 * _DAY, 60, 3650 * _DAY),
                      "refuse readings older than this (catch-up after an outage is fine)"),
        "voltage_max_v": (_Number(253.0, 1.0, 1000.0),
                          "|p| may not exceed phases x CT rating x this voltage"),
        "processes": (_Workers(),
                      "ingest processes, each receiving, verifying and storing; \"auto\" = "
                      "one per core (0 on one core), 0 = all in the gateway process"),
        "commit_linger_ms": (_Number(0.0, 0.0, 100.0),
                             "group commit: wait this long for more readings before COMMIT "
                             "(0 = commit what one turn of the event loop verified)"),
        "commit_window_ms": (_Number(250.0, 0.0, 2000.0),
                             "group commit: wait up to this long for other meters' readings "
                             "when their recent rate says some will come (one fsync for all: "
                             "SD card wear); 0 = never wait"),
        "commit_max_rows": (_Int(2000, 1, 100000), "group commit: at most this many rows"),
        "max_pending_readings": (_Int(20000, 100, 10_000_000),
                                 "above this backlog answer 5.03 Service Unavailable"),
        "overload_max_age_s": (_Int(5, 1, 3600), "Max-Age sent with 5.03: when to retry"),
    },
    "http": {
        "bind": (_Address("127.0.0.1"), "status page and /metrics; \"0.0.0.0\" to serve the LAN"),
        "port": (_Int(8683, 0, 65535), "0 = any free port"),
    },
    "log": {
        "level": (_Choice("info", ("debug", "info", "warning", "error")), ""),
        "format": (_Choice("json", ("json", "kv")), "json lines or key=value"),
    },
    "chain": {
        "rpc_url": (_RpcUrl("anvil"), "\"anvil\" = embedded local node, or an http(s):// URL"),
        "chain_id": (_Int(31337, 1, 2**63 - 1), "31337 = anvil"),
        "contract": (_EvmAddressOrEmpty(""), "settlement contract; \"\" until deployed"),
        "keystore": (_Text("gateway-key.json", "a file path"),
                     "the gateway's encrypted chain key, relative to data_dir"),
        "interval_s": (_IntChoice(900, (900, 1800)), "settlement interval, s (as deployed)"),
        "grace_s": (_Int(120, 0, 86400),
                    "wait this long after an interval ends before submitting it"),
        "confirmations": (_Int(1, 1, 1000), "blocks on top before a submission counts"),
        "poll_s": (_Number(5.0, 0.05, 3600.0), "chain link: how often to look for work"),
        "rebroadcast_s": (_Int(60, 1, 86400),
                          "re-send a signed transaction not mined after this long"),
        "backfill_intervals": (_Int(96, 0, 100_000),
                               "first start: also submit this many past intervals"),
        "state_interval_s": (_Int(30, 1, 86400),
                             "embedded anvil: write its state to the data folder this often"),
        "batch_intervals": (_Int(0, 0, 8),
                            "intervals per submission; 0: two hours when the community's "
                            "signed readings for both fit one transaction, else one"),
    },
    "community": {
        "name": (_Text("Wattshare community"), "shown on the community page"),
        "timezone": (_TimeZone(""),
                     'local time of pages and reports: "" = this machine\'s, or e.g. '
                     '"Europe/Paris"'),
        "currency": (_Currency("EUR"), "of the tariffs below"),
        "retail_per_kwh": (_Number(0.25, 0.0, 100.0),
                           "what the supplier charges per kWh imported from the grid"),
        "feed_in_per_kwh": (_Number(0.08, 0.0, 100.0),
                            "what the grid pays per kWh exported to it"),
        "p2p_per_kwh": (_Number(0.15, 0.0, 100.0),
                        "the community's price per kWh shared, between feed-in and retail"),
    },
}


@dataclass(frozen=True)
class CoapConfig:
    bind: str
    port: int
    receive_buffer_bytes: int
    front_end: str = "lean"
    max_datagrams_per_source: int = 200


@dataclass(frozen=True)
class IngestConfig:
    max_future_skew_s: int
    max_age_s: int
    voltage_max_v: float
    processes: object  # "auto" or int
    commit_linger_ms: float
    commit_window_ms: float
    commit_max_rows: int
    max_pending_readings: int
    overload_max_age_s: int

    def process_count(self):
        """Ingest processes to start (0 = ingest in the gateway process). "auto": one per
        core this process may run on, none on a single core (nothing to spread)."""
        if self.processes == "auto":
            cores = len(os.sched_getaffinity(0))
            return cores if cores > 1 else 0
        return self.processes


@dataclass(frozen=True)
class HttpConfig:
    bind: str
    port: int


@dataclass(frozen=True)
class LogConfig:
    level: str
    format: str


@dataclass(frozen=True)
class ChainConfig:
    rpc_url: str
    chain_id: int
    contract: str
    keystore: str
    interval_s: int = 900
    grace_s: int = 120
    confirmations: int = 1
    poll_s: float = 5.0
    rebroadcast_s: int = 60
    backfill_intervals: int = 96
    state_interval_s: int = 30
    batch_intervals: int = 0


@dataclass(frozen=True)
class CommunityConfig:
    """What the community states about itself: its name, its local time and its
    tariffs (the bill on the community page is compared with grid-only at these)."""

    name: str = "Wattshare community"
    timezone: str = ""
    currency: str = "EUR"
    retail_per_kwh: float = 0.25
    feed_in_per_kwh: float = 0.08
    p2p_per_kwh: float = 0.15

    @property
    def tz(self):
        """The zone for :mod:`gateway.units` (None = the machine's local time)."""
        from gateway import units

        return units.zone(self.timezone)


@dataclass(frozen=True)
class GatewayConfig:
    """The whole validated configuration. ``path`` is the file it came from."""

    path: Path
    data_dir: Path
    coap: CoapConfig
    ingest: IngestConfig
    http: HttpConfig
    log: LogConfig
    chain: ChainConfig
    community: CommunityConfig = CommunityConfig()

    @property
    def db_path(self):
        return self.data_dir / DB_NAME

    @property
    def keystore_path(self):
        return self.data_dir / self.chain.keystore


def default_config_path():
    """``$WATTSHARE_CONFIG``, else ``$WATTSHARE_DATA/gateway.toml``, else the system path."""
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    return Path(os.environ.get(ENV_DATA) or DEFAULT_DATA_DIR) / CONFIG_NAME


def _values(path, doc):
    where = str(path)
    toml_schema.Table(doc, where, "", tuple(SCHEMA), ConfigError)
    out = {}
    for section, fields in SCHEMA.items():
        given = doc.get(section, {})
        table = toml_schema.Table(given, where, section, tuple(fields), ConfigError)
        values = {}
        for key, (spec, _) in fields.items():
            value = given.get(key, spec.default)
            try:
                values[key] = spec.check(value)
            except ValueError as e:
                table.fail(key, str(e), value=value)
        out[section] = values
    return out


def parse(text, path):
    """Validate TOML text; ``path`` names the file in errors and anchors relative paths."""
    path = Path(path)
    doc = toml_schema.parse_text(text, str(path), ConfigError)
    v = _values(path, doc)
    _check_tariffs(path, v["community"])
    data_dir = Path(v["gateway"]["data_dir"])
    if not data_dir.is_absolute():
        data_dir = (path.parent / data_dir).resolve()
    return GatewayConfig(
        path=path,
        data_dir=data_dir,
        coap=CoapConfig(**v["coap"]),
        ingest=IngestConfig(**v["ingest"]),
        http=HttpConfig(**v["http"]),
        log=LogConfig(**v["log"]),
        chain=ChainConfig(**v["chain"]),
        community=CommunityConfig(**v["community"]),
    )


def _check_tariffs(path, c):
    # The P2P price sits between what the grid pays and what the supplier charges: then
    # sharing pays both sides (docs/gateway.md, [community]).
    if not c["feed_in_per_kwh"] <= c["p2p_per_kwh"] <= c["retail_per_kwh"]:
        raise ConfigError(
            f"{path}: community.p2p_per_kwh = {c['p2p_per_kwh']:g}: must lie between "
            f"community.feed_in_per_kwh ({c['feed_in_per_kwh']:g}) and "
            f"community.retail_per_kwh ({c['retail_per_kwh']:g})")


def load(path=None):
    """Read and validate a config file (default: :func:`default_config_path`)."""
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; create it with `wattshare gateway init --data DIR` "
            f"or point --config / ${ENV_CONFIG} at it"
        ) from None
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse(text, path)


def render(overrides=None):
    """TOML text with every key, its default (or override) and a comment.

    ``overrides``: {"section": {"key": value}}; values are validated like a loaded file.
    """
    overrides = overrides or {}
    lines = [
        "# Wattshare gateway configuration, written by `wattshare gateway init`.",
        "# Every key is optional (the value shown is the default unless changed);",
        "# see docs/gateway.md.",
    ]
    for section, fields in SCHEMA.items():
        lines.append("")
        lines.append(f"[{section}]")
        for key, (spec, comment) in fields.items():
            value = overrides.get(section, {}).get(key, spec.default)
            try:
                value = spec.check(value)
            except ValueError as e:
                raise ConfigError(f"{section}.{key} = {toml_schema.show(value)}: {e}") from None
            line = f"{key} = {spec.toml(value)}"
            if comment:
                line = f"{line:34} # {comment}"
            lines.append(line)
    return "\n".join(lines) + "\n"

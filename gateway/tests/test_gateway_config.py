"""gateway.toml: defaults, validation errors naming file, key, value and what is allowed."""

import pytest

from gateway import config
from gateway.errors import ConfigError


def test_rendered_defaults_load_back_to_the_defaults(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(config.render())
    cfg = config.load(path)
    assert cfg.coap.port == 5683 and cfg.coap.bind == "::"
    assert cfg.coap.front_end == "lean"
    assert 'front_end = "lean"' in path.read_text()  # `gateway init` writes the key
    assert cfg.ingest.max_future_skew_s == 300 and cfg.ingest.max_age_s == 30 * 86400
    assert cfg.chain.rpc_url == "anvil"
    assert cfg.data_dir == tmp_path.resolve()  # "." is relative to the file
    assert cfg.db_path == tmp_path.resolve() / "gateway.sqlite3"


def test_empty_file_means_all_defaults(tmp_path):
    cfg = config.parse("", tmp_path / "g.toml")
    assert cfg.http.port == 8683 and cfg.ingest.processes == "auto"


@pytest.mark.parametrize("setting, cores, expected", [
    ('"auto"', {0, 1, 2, 3}, 4), ('"auto"', {0}, 0), ("3", {0}, 3), ("0", {0, 1}, 0)])
def test_ingest_processes_auto_means_one_per_usable_core(tmp_path, monkeypatch, setting, cores,
                                                         expected):
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: cores)
    cfg = config.parse(f"[ingest]\nprocesses = {setting}\n", tmp_path / "g.toml")
    assert cfg.ingest.process_count() == expected


def test_coap_front_end_is_selectable(tmp_path):
    cfg = config.parse('[coap]\nfront_end = "aiocoap"\n', tmp_path / "g.toml")
    assert cfg.coap.front_end == "aiocoap"
    text = config.render({"coap": {"front_end": "aiocoap"}})
    assert config.parse(text, tmp_path / "g.toml").coap.front_end == "aiocoap"


def test_overrides_and_absolute_data_dir(tmp_path):
    cfg = config.parse('[gateway]\ndata_dir = "/srv/ws"\n[ingest]\nprocesses = 0\n',
                       tmp_path / "g.toml")
    assert str(cfg.data_dir) == "/srv/ws" and cfg.ingest.process_count() == 0


@pytest.mark.parametrize("text, fragments", [
    ("[coap]\nport = 70000\n", [": coap.port = 70000: must be an integer 0..65535"]),
    ('[coap]\nport = "5683"\n', [': coap.port = "5683": must be an integer']),
    ('[coap]\nbind = "localhost"\n', [': coap.bind = "localhost": must be an IP address']),
    ('[log]\nformat = "xml"\n', [': log.format = "xml": must be one of "json", "kv"']),
    ('[coap]\nfront_end = "libcoap"\n', ['coap.front_end = "libcoap"', '"lean", "aiocoap"']),
    ("[coap]\nfront_end = 1\n", ["coap.front_end = 1", '"lean", "aiocoap"']),
    ("[ingest]\nprocesses = -1\n", ["ingest.processes = -1", '"auto" or an integer']),
    ('[chain]\nrpc_url = "ftp://x"\n', ['chain.rpc_url = "ftp://x"', '"anvil"']),
    ('[chain]\ncontract = "0x12"\n', ['chain.contract = "0x12"', "20-byte address"]),
    ("[ingest]\nmax_age = 5\n", [": ingest.max_age: unknown key; allowed keys:", "max_age_s"]),
    ("[database]\n", [": database: unknown key; allowed keys: chain, coap, community, gateway,"]),
    ('[community]\ntimezone = "Mars/Olympus"\n', [': community.timezone = "Mars/Olympus": '
                                                  "unknown time zone"]),
    ("[community]\nretail_per_kwh = -1\n", [": community.retail_per_kwh = -1: must be a number"
                                            " 0..100"]),
    ("[community]\np2p_per_kwh = 0.3\n", [": community.p2p_per_kwh = 0.3: must lie between",
                                           "community.feed_in_per_kwh (0.08)",
                                           "community.retail_per_kwh (0.25)"]),
    ("[community]\nfeed_in_per_kwh = 0.2\n", [": community.p2p_per_kwh = 0.15: must lie between",
                                               "community.feed_in_per_kwh (0.2)"]),
    ('[community]\ncurrency = ""\n', [': community.currency = "": must be a short currency']),
    ("[coap\n", ["not valid TOML"]),
    ("coap = 1\n", [": coap = 1: must be a table"]),
])
def test_errors_name_file_key_value_and_allowed(tmp_path, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    message = str(e.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file_says_how_to_create_it(tmp_path):
    with pytest.raises(ConfigError, match="gateway init"):
        config.load(tmp_path / "nope.toml")


def test_default_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(config.ENV_CONFIG, raising=False)
    monkeypatch.setenv(config.ENV_DATA, str(tmp_path))
    assert config.default_config_path() == tmp_path / "gateway.toml"
    monkeypatch.setenv(config.ENV_CONFIG, "/etc/x.toml")
    assert str(config.default_config_path()) == "/etc/x.toml"


def test_community_tariffs_and_time_zone(tmp_path):
    cfg = config.parse('[community]\nname = "Rue du Four"\ntimezone = "Europe/Paris"\n'
                       'retail_per_kwh = 0.30\nfeed_in_per_kwh = 0.05\np2p_per_kwh = 0.12\n',
                       tmp_path / "g.toml")
    c = cfg.community
    assert (c.name, c.currency, c.retail_per_kwh, c.feed_in_per_kwh, c.p2p_per_kwh) == (
        "Rue du Four", "EUR", 0.30, 0.05, 0.12)
    assert str(c.tz) == "Europe/Paris"
    assert config.parse("", tmp_path / "g.toml").community.tz is None  # the machine's zone
    assert "p2p_per_kwh = 0.15" in config.render()  # `gateway init` writes them out

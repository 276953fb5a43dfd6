"""Test bed for the community page and view tests: three members on a real anvil (the
producer gives 40 % to the school), three intervals settled through the gateway's own
batcher and outbox in one submission (with the meters' signed boundary readings), the
household silent after the first (a gap in the second and third); a gateway.toml with the
community's tariffs."""

import time

from chain_community import Community, L

from gateway import community
from gateway import config as gwconfig
from gateway.chain import deploy, node
from gateway.chain.outbox import Outbox


def build(tmp):
    """(Community, config, ChainView, first interval). The config's data folder is
    ``tmp`` (the database, and ``anvil.url`` naming the running node)."""
    c = Community(tmp)
    producer, school, home = c.member("producer"), c.member("school"), c.member("household")
    deploy.set_producer_key(c.port, producer.owner_key, c.settlement, producer.index,
                            "static", [school.index], [4000])
    first = c.first
    c.store_readings(first * L, (first + 1) * L, [producer, school, home])
    c.store_readings((first + 1) * L + 10, (first + 3) * L, [producer, school])
    c.batcher().build_due(since=first)
    outbox = Outbox(c.conn, c.port, c.gateway_key, c.settlement)
    for _ in range(100):
        outbox.step()
        states = dict(c.conn.execute("SELECT interval, state FROM chain_outbox").fetchall())
        if all(s == "confirmed" for s in states.values()):
            break
        time.sleep(0.05)
    path = tmp / gwconfig.CONFIG_NAME
    path.write_text(gwconfig.render({
        "gateway": {"data_dir": "."}, "http": {"bind": "127.0.0.1", "port": 0},
        "chain": {"contract": c.settlement},
        "community": {"name": "Rue du Four", "timezone": "UTC", "retail_per_kwh": 0.30,
                      "feed_in_per_kwh": 0.06, "p2p_per_kwh": 0.15}}))
    cfg = gwconfig.load(path)
    (tmp / node.URL_FILE).write_text(c.node.url)
    c.deployment.save(tmp / community.DEPLOYMENT_NAME)
    chain = community.ChainView(c.port, c.settlement, c.deployment.block_number)
    return c, cfg, chain, first

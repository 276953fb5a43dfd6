"""Fixtures: a Wattshare community (token, registry, settlement) deployed with titanoboa.

titanoboa's pytest plugin snapshots the chain around every fixture and test (and
every hypothesis example), so tests start from the fixture's state and never see
each other's transactions.
"""

import sys
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from contracts.allocation_reference import MAX_WH  # noqa: E402
from contracts.boa_harness import deploy_community  # noqa: E402

BIG_COMMUNITY_METERS = 256  # the documented maximum
BIG_COMMUNITY_OWNERS = 64  # so several meters share an owner account
FUNDING = 10**24  # 1e6 tokens each: more than any interval in these tests costs


# Contracts are deployed once per module and every test starts from that snapshot:
# py-evm slows down with every account a session has ever written to, so deploying
# afresh for each test would make the later tests several times slower.


@pytest.fixture(scope="module")
def _deployed_community():
    return deploy_community()


@pytest.fixture
def community(_deployed_community):
    return _deployed_community.fork()


@pytest.fixture
def trio(community):
    """Resident (PV producer), school and neighbour, the school and neighbour funded."""
    c = community
    c.resident = c.new_account("resident")
    c.school = c.new_account("school")
    c.neighbour = c.new_account("neighbour")
    c.resident_meter = c.register_meter(c.resident)
    c.school_meter = c.register_meter(c.school)
    c.neighbour_meter = c.register_meter(c.neighbour)
    c.fund(c.school, FUNDING)
    c.fund(c.neighbour, FUNDING)
    return c


@pytest.fixture(scope="module")
def _deployed_three_gateways():
    c = deploy_community(n_gateways=3)
    accounts = [c.new_account(f"member{k}") for k in range(9)]
    for k, account in enumerate(accounts):
        c.register_meter(account, c.gateways[k // 3])
        c.fund(account, FUNDING)
    return c


@pytest.fixture
def three_gateways(_deployed_three_gateways):
    """Three gateways, three meters on each (meters 1-3 on gateway 0, 4-6 on 1, 7-9 on 2)."""
    return _deployed_three_gateways.fork()


@pytest.fixture(scope="module", params=["funded", "underfunded"])
def big_community(request):
    """256 meters on one gateway, 64 owners. "underfunded": a quarter of the owners
    have no prepaid balance and the rest a small one, so debts occur.

    Every meter has a signed window of MAX_WINDOW intervals from `window_start`
    holding MAX_WH import and export (512 signature checks, once per module), so each
    example submits interval `window_start` with any energies up to MAX_WH."""
    c = deploy_community()
    owners = [c.new_account(f"owner{k}") for k in range(BIG_COMMUNITY_OWNERS)]
    for i in range(BIG_COMMUNITY_METERS):
        c.register_meter(owners[i % BIG_COMMUNITY_OWNERS])
    for k, owner in enumerate(owners):
        amount = FUNDING if request.param == "funded" else (k % 4) * 10**17
        if amount:
            c.fund(owner, amount)
    c.accounts = owners
    c.funding = request.param
    c.window_start = c.next_interval()
    c.open_window(c.window_start, dict.fromkeys(c.owners, (MAX_WH, MAX_WH)))
    return c

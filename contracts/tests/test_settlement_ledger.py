"""Prepaid balances, the unfunded-consumer policy (debt and receivable), repayment,
claims, withdrawals; tokens are never created or destroyed."""

import boa
import pytest

from contracts.allocation_reference import KEY_STATIC, Key
from contracts.boa_harness import event_tuples, settlement_outcome


@pytest.fixture
def village(community):
    """Price 10 units/Wh. Resident (PV, gives 40 % to the school), school with no
    prepaid balance, neighbour with 1000 units."""
    c = community
    with boa.env.prank(c.admin):
        c.settlement.set_price(10)
    c.resident, c.school, c.neighbour = (c.new_account(n) for n in ("resident", "school",
                                                                     "neighbour"))
    c.r, c.s, c.n = (c.register_meter(a) for a in (c.resident, c.school, c.neighbour))
    c.fund(c.neighbour, 1000)
    c.set_producer_key(c.r, Key(KEY_STATIC, (c.s,), (4000,)))
    return c


def _ledger(c, accounts):
    s = c.settlement
    return {a: (s.balance_of(a), s.debt_of(a), s.receivable_of(a)) for a in accounts}


def _check_invariants(c, accounts):
    s = c.settlement
    held = c.token.balanceOf(s.address)
    assert held == sum(s.balance_of(a) for a in accounts) + s.recovered()
    assert sum(s.receivable_of(a) for a in accounts) == sum(s.debt_of(a) for a in accounts) + \
        s.recovered()


def test_deposit_and_withdraw(village):
    c = village
    c.give_tokens(c.school, 500)
    with boa.env.prank(c.school):
        c.token.approve(c.settlement.address, 500)
        c.settlement.deposit(500)
        assert event_tuples(c.settlement) == [("Deposited", c.school, c.school, 500, 0)]
        with boa.reverts("settlement: balance too low"):
            c.settlement.withdraw(501)
        c.settlement.withdraw(200)
        assert event_tuples(c.settlement) == [("Withdrawn", c.school, 200, 0)]
        with boa.reverts("settlement: zero amount"):
            c.settlement.deposit(0)
    assert c.settlement.balance_of(c.school) == 300
    assert c.token.balanceOf(c.school) == 200
    _check_invariants(c, [c.resident, c.school, c.neighbour])


def test_unfunded_consumer_gets_energy_and_debt(village):
    c = village
    accounts = [c.resident, c.school, c.neighbour]
    interval = c.next_interval()
    c.submit(interval, {c.r: (0, 1000), c.s: (2000, 0), c.n: (300, 0)})
    r = settlement_outcome(event_tuples(c.settlement))
    # energy is allocated as if funded: 400 Wh tier 1, then the pool 600 Wh
    # pro rata 1600 : 300 -> school floor(600 * 1600 / 1900) = 505, neighbour 95
    assert r.p2p == {(c.r, c.s): 400}
    assert r.pool_allocations == {c.s: 505, c.n: 95}
    # the school pays nothing: 4000 + 5050 units unpaid; the neighbour pays 950
    assert r.unpaid == [(interval, c.s, c.school, 9050)]
    assert r.receivables == [(interval, c.r, c.resident, 9050)]
    assert _ledger(c, accounts) == {
        c.resident: (950, 0, 9050),
        c.school: (0, 9050, 0),
        c.neighbour: (50, 0, 0),
    }
    _check_invariants(c, accounts)
    # nothing to claim until the school pays
    with boa.env.prank(c.resident):
        assert c.settlement.claim_receivable() == 0
    # the school deposits: its debt is repaid first
    c.give_tokens(c.school, 10_000)
    with boa.env.prank(c.school):
        c.token.approve(c.settlement.address, 10_000)
        c.settlement.deposit(10_000)
        assert event_tuples(c.settlement) == [("Deposited", c.school, c.school, 10_000, 9050)]
    assert c.settlement.recovered() == 9050
    _check_invariants(c, accounts)
    with boa.env.prank(c.resident):
        c.settlement.claim_receivable()
        assert event_tuples(c.settlement) == [("ReceivableClaimed", c.resident, 9050)]
        c.settlement.withdraw(10_000)
    assert c.token.balanceOf(c.resident) == 10_000  # 1000 Wh at 10 units/Wh
    assert _ledger(c, accounts) == {
        c.resident: (0, 0, 0), c.school: (950, 0, 0), c.neighbour: (50, 0, 0)}
    _check_invariants(c, accounts)


def test_partly_funded_consumer_pays_what_it_has(village):
    c = village
    c.fund(c.school, 3000)
    interval = c.next_interval()
    c.submit(interval, {c.r: (0, 1000), c.s: (2000, 0), c.n: (300, 0)})
    r = settlement_outcome(event_tuples(c.settlement))
    # 4000 for tier 1, 3000 paid; 5050 for the pool, none paid
    assert r.unpaid == [(interval, c.s, c.school, 1000 + 5050)]
    assert _ledger(c, [c.resident, c.school]) == {
        c.resident: (3950, 0, 6050), c.school: (0, 6050, 0)}
    _check_invariants(c, [c.resident, c.school, c.neighbour])


def test_third_party_repays_a_debt(village):
    c = village
    interval = c.next_interval()
    c.submit(interval, {c.r: (0, 1000), c.s: (400, 0)})
    # 40 % of 1000 Wh at 10 units/Wh; the other 600 Wh find no one in need: grid
    assert c.settlement.debt_of(c.school) == 4000
    with boa.env.prank(c.treasury):
        c.token.approve(c.settlement.address, 10**6)
        c.settlement.repay_debt(c.school, 10**6)  # pulls no more than the debt
        assert event_tuples(c.settlement) == [("DebtRepaid", c.school, c.treasury, 4000)]
        with boa.reverts("settlement: no debt to repay"):
            c.settlement.repay_debt(c.school, 1)
    with boa.env.prank(c.resident):
        assert c.settlement.claim_receivable() == 4000
    assert c.settlement.balance_of(c.resident) == 4000
    _check_invariants(c, [c.resident, c.school, c.neighbour, c.treasury])


def test_pool_shortfall_is_shared_by_the_pool_producers(community):
    c = community
    with boa.env.prank(c.admin):
        c.settlement.set_price(10)
    p1, p2, x = (c.new_account(n) for n in ("p1", "p2", "x"))
    m1, m2, mx = (c.register_meter(a) for a in (p1, p2, x))
    c.fund(x, 2500)
    interval = c.next_interval()
    c.submit(interval, {m1: (0, 600), m2: (0, 400), mx: (1000, 0)})
    r = settlement_outcome(event_tuples(c.settlement))
    assert r.unpaid == [(interval, mx, x, 7500)]
    # 7500 unpaid over tokens 6000 : 4000 -> 4500 and 3000
    assert r.receivables == [(interval, m1, p1, 4500), (interval, m2, p2, 3000)]
    assert _ledger(c, [p1, p2, x]) == {p1: (1500, 0, 4500), p2: (1000, 0, 3000),
                                       x: (0, 7500, 0)}
    _check_invariants(c, [p1, p2, x])


def test_withdraw_pays_own_debt_first(village):
    c = village
    # interval 1: the school imports 300 Wh from the pool, unfunded -> debt 3000
    first = c.next_interval()
    c.submit(first, {c.r: (0, 300), c.s: (300, 0)})
    assert c.settlement.debt_of(c.school) == 3000
    # interval 2: the school's roof exports 800 Wh to the neighbour (funded, 1000 units)
    c.fund(c.neighbour, 10_000)
    second = c.next_interval()
    c.submit(second, {c.s: (0, 800), c.n: (800, 0)})
    assert c.settlement.balance_of(c.school) == 8000
    with boa.env.prank(c.school):
        with boa.reverts("settlement: balance too low"):
            c.settlement.withdraw(5001)
        c.settlement.withdraw(5000)
        assert event_tuples(c.settlement) == [("Withdrawn", c.school, 5000, 3000)]
    assert (c.settlement.balance_of(c.school), c.settlement.debt_of(c.school)) == (0, 0)
    _check_invariants(c, [c.resident, c.school, c.neighbour])


def test_zero_price_moves_no_tokens(village):
    c = village
    with boa.env.prank(c.admin):
        c.settlement.set_price(0)
    interval = c.next_interval()
    c.submit(interval, {c.r: (0, 1000), c.s: (2000, 0), c.n: (300, 0)})
    r = settlement_outcome(event_tuples(c.settlement))
    assert r.p2p == {(c.r, c.s): 400}
    assert r.p2p_tokens == {(c.r, c.s): 0}
    assert r.unpaid == [] and r.receivables == []
    assert _ledger(c, [c.resident, c.school, c.neighbour]) == {
        c.resident: (0, 0, 0), c.school: (0, 0, 0), c.neighbour: (1000, 0, 0)}

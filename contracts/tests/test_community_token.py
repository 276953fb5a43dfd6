"""CommunityToken: fixed supply minted once to the treasury, no minter."""

import boa
import pytest

from contracts.boa_harness import DECIMALS, SUPPLY, deployer


def test_supply_minted_once_to_treasury(community):
    t = community.token
    assert t.name() == "Wattshare Sun"
    assert t.symbol() == "SUN"
    assert t.decimals() == DECIMALS
    assert t.totalSupply() == SUPPLY
    assert t.balanceOf(community.treasury) == SUPPLY
    assert t.balanceOf(community.admin) == 0


def test_no_minting_surface(community):
    names = {item.get("name") for item in community.token.abi}
    assert not names & {"mint", "set_minter", "is_minter", "burn", "burn_from",
                        "transfer_ownership", "renounce_ownership", "owner"}
    # the mint selector is not dispatched: the call reverts, the supply is unchanged
    mint_selector = bytes.fromhex("40c10f19")  # mint(address,uint256)
    calldata = (mint_selector + bytes(12) + bytes.fromhex(community.admin[2:])
                + (10**30).to_bytes(32, "big"))
    with boa.env.prank(community.admin), pytest.raises(Exception):  # noqa: B017
        boa.env.raw_call(community.token.address, data=calldata)
    assert community.token.totalSupply() == SUPPLY


def test_transfer_and_allowance(community):
    t = community.token
    alice = community.new_account("alice")
    bob = community.new_account("bob")
    community.give_tokens(alice, 1000)
    with boa.env.prank(alice):
        t.transfer(bob, 300)
        t.approve(bob, 200)
    with boa.env.prank(bob):
        t.transferFrom(alice, bob, 150)
    assert (t.balanceOf(alice), t.balanceOf(bob), t.allowance(alice, bob)) == (550, 450, 50)
    with boa.env.prank(bob), boa.reverts():
        t.transferFrom(alice, bob, 51)


@pytest.mark.parametrize("decimals", [0, 6, 18])
def test_metadata_configurable(community, decimals):
    t = deployer("CommunityToken").deploy("Energie Quartier Nord", "EQN", decimals,
                                          community.treasury, 42)
    assert (t.name(), t.symbol(), t.decimals(), t.totalSupply()) == (
        "Energie Quartier Nord", "EQN", decimals, 42)


def test_rejects_zero_treasury_or_supply(community):
    with boa.reverts("token: treasury is the zero address"):
        deployer("CommunityToken").deploy("X", "X", 18, "0x" + "00" * 20, 1)
    with boa.reverts("token: zero supply"):
        deployer("CommunityToken").deploy("X", "X", 18, community.treasury, 0)

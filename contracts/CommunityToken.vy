# pragma version 0.4.3
"""
@title Wattshare community token
@license MIT
@notice ERC-20 (+ EIP-2612 permit) built on snekmate's `erc20` module.
        The whole supply is minted once, at deployment, to the community
        treasury. There is no minter: `mint`, `set_minter`, `burn` and the
        ownership functions of the module are not exported, the deployer's
        minter flag is cleared and ownership is renounced in the constructor,
        so the total supply can never change.
"""

from ethereum.ercs import IERC20
from ethereum.ercs import IERC20Detailed
from snekmate.auth import ownable
from snekmate.tokens import erc20

implements: IERC20
implements: IERC20Detailed

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.name,
    erc20.symbol,
    erc20.decimals,
    erc20.totalSupply,
    erc20.balanceOf,
    erc20.allowance,
    erc20.transfer,
    erc20.approve,
    erc20.transferFrom,
    erc20.permit,
    erc20.nonces,
    erc20.DOMAIN_SEPARATOR,
    erc20.eip712Domain,
)


@deploy
def __init__(
    name_: String[25], symbol_: String[5], decimals_: uint8, treasury: address, supply: uint256
):
    """
    @param name_ Token name, also the EIP-712 domain name (permit signatures).
    @param symbol_ Token symbol.
    @param decimals_ Decimal places shown by wallets.
    @param treasury Receives the whole, fixed supply.
    @param supply Total supply in the smallest token unit.
    """
    assert treasury != empty(address), "token: treasury is the zero address"
    assert supply != 0, "token: zero supply"
    ownable.__init__()
    erc20.__init__(name_, symbol_, decimals_, name_, "1")
    erc20._mint(treasury, supply)
    # Fixed supply: nobody may mint after this point.
    erc20.is_minter[msg.sender] = False
    log erc20.RoleMinterChanged(minter=msg.sender, status=False)
    ownable._transfer_ownership(empty(address))

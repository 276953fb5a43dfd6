"""Deploying a Wattshare community and administering it from the gateway.

:func:`deploy_community` deploys the token (whole supply to the admin, who is also the
treasury), the registry (admin = deployer; the given gateways authorised) and the
settlement contract, each with a locally signed EIP-1559 transaction. The result is a
:class:`Deployment`, saved as ``DATA_DIR/chain-deployment.json`` by the CLI, which also
writes the settlement address into ``gateway.toml`` ``[chain] contract``.

Community administration (registry and settlement calls) is here too; every function
takes the signing key explicitly.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_account import Account
from eth_utils import to_checksum_address

from gateway import config as gwconfig
from gateway.chain import contracts, defaults, rpc
from gateway.chain.errors import ChainError, RpcError
from gateway.errors import ConfigError
from tools import toml_schema

DEPLOYMENT_NAME = "chain-deployment.json"
DEFAULT_SETTLE_DELAY_S = defaults.SETTLE_DELAY_S
DEFAULT_PRICE = defaults.PRICE
DEFAULT_SUPPLY = 10**9 * 10**18
GATEWAY_FUNDING_WEI = 10**18  # embedded anvil: gas money for the gateway account


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    token: str
    registry: str
    settlement: str
    admin: str
    block_number: int
    interval_s: int
    settle_delay_s: int
    price: int
    anchors: str | None = None  # MeterAnchors (absent in records of older deployments)

    def save(self, path):
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path):
        try:
            return cls(**json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ChainError(f"{path}: no deployment record; run `wattshare chain deploy`"
                             ) from None
        except (OSError, ValueError, TypeError) as e:
            raise ChainError(f"{path}: not a deployment record: {e}") from None


def transact(port, key, to, signature, args, gas=None):
    """Sign and send one call; the receipt. Reverts become :class:`ChainError` naming the
    call and the contract's reason."""
    data = rpc.encode_call(signature, args)
    try:
        return rpc.send_transaction(port, key, to, data, gas=gas)
    except RpcError as e:
        name = signature.split("(")[0]
        raise ChainError(f"{name} on {to} refused: {e}") from None


def view(port, to, signature, args, types):
    out = rpc.decode_output(types, port.call(to, rpc.encode_call(signature, args)))
    return out[0] if len(out) == 1 else out


def _deploy(port, key, name, args):
    receipt = rpc.send_transaction(port, key, None, contracts.deploy_data(name, args))
    return receipt.contract_address, receipt


def deploy_community(port, admin_key, gateways=(), *, interval_s=900,
                     settle_delay_s=DEFAULT_SETTLE_DELAY_S, price=DEFAULT_PRICE,
                     token_name="Wattshare Sun", token_symbol="SUN", supply=DEFAULT_SUPPLY,
                     fund_gateways_wei=0):
    """Deploy token, registry, the meter anchors (signed readings checked on chain) and
    settlement; authorise ``gateways``; optionally send each gateway ``fund_gateways_wei``
    for gas. Returns the :class:`Deployment`.

    The settlement contract settles intervals from the one that starts at or after its
    deployment block's time: a community deployed today cannot settle yesterday."""
    admin = Account.from_key(admin_key).address
    token, _ = _deploy(port, admin_key, "CommunityToken",
                       [token_name, token_symbol, 18, admin, supply])
    registry, _ = _deploy(port, admin_key, "MeterRegistry", [])
    anchors, _ = _deploy(port, admin_key, "MeterAnchors", [])
    settlement, receipt = _deploy(port, admin_key, "Settlement",
                                  [token, registry, anchors, interval_s, settle_delay_s, price])
    for gateway in gateways:
        add_gateway(port, admin_key, registry, gateway)
        if fund_gateways_wei:
            rpc.send_transaction(port, admin_key, to_checksum_address(gateway), b"",
                                 value=fund_gateways_wei, gas=21_000)
    return Deployment(port.chain_id, token, registry, settlement, admin,
                      receipt.block_number, interval_s, settle_delay_s, price, anchors)


# ---- registry


def add_gateway(port, admin_key, registry, gateway):
    if view(port, registry, contracts.IS_GATEWAY, [gateway], ["bool"]):
        return None
    return transact(port, admin_key, registry, contracts.ADD_GATEWAY, [gateway])


def register_meter(port, admin_key, registry, device_id, pubkey, owner, gateway):
    """Register a meter with its public key (the contract checks its signed readings
    against it); returns its index (from the MeterRegistered event)."""
    if len(device_id) != 8 or len(pubkey) != 65:
        raise ValueError("device id must be 8 bytes and the public key 65 bytes")
    existing = view(port, registry, contracts.INDEX_OF, [device_id], ["uint16"])
    if existing:
        raise ChainError(f"device {device_id.hex()} is already registered on chain as meter"
                         f" {existing}")
    receipt = transact(port, admin_key, registry, contracts.REGISTER_METER,
                       [device_id, bytes(pubkey), owner, gateway])
    for log in receipt.logs:
        decoded = contracts.decode_log("MeterRegistry", log)
        if decoded and decoded[0] == "MeterRegistered":
            return decoded[1]["index"]
    raise ChainError("register_meter: no MeterRegistered event in the receipt")


def meter_index(port, registry, device_id):
    """The registry's index of a device id (0: not registered)."""
    return view(port, registry, contracts.INDEX_OF, [device_id], ["uint16"])


# ---- settlement


def set_price(port, admin_key, settlement, price):
    return transact(port, admin_key, settlement, contracts.SET_PRICE, [price])


def set_producer_key(port, owner_key, settlement, producer, kind, beneficiaries, weights):
    """The producer's owner sets its tier-1 key (kind: a name of contracts.KEY_KINDS)."""
    return transact(port, owner_key, settlement, contracts.SET_PRODUCER_KEY,
                    [producer, contracts.KEY_KINDS[kind], list(beneficiaries), list(weights)])


def set_producer_coefficients(port, admin_key, settlement, producer, beneficiaries, ppm):
    return transact(port, admin_key, settlement, contracts.SET_PRODUCER_COEFFICIENTS,
                    [producer, list(beneficiaries), list(ppm)])


def fund(port, treasury_key, token, settlement, account, amount):
    """The treasury prepays ``amount`` token units into ``account``'s settlement balance."""
    transact(port, treasury_key, token, contracts.APPROVE, [settlement, amount])
    return transact(port, treasury_key, settlement, contracts.DEPOSIT_FOR, [account, amount])


# ---- gateway.toml


def write_contract_to_config(config_path, settlement):
    """Set ``[chain] contract`` in gateway.toml, keeping every other value."""
    path = Path(config_path)
    doc, _ = toml_schema.read(path, ConfigError)
    doc.setdefault("chain", {})["contract"] = to_checksum_address(settlement)
    text = gwconfig.render(doc)
    gwconfig.parse(text, path)  # still valid
    tmp = path.with_suffix(f".toml.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)

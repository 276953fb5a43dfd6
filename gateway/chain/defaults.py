"""Defaults of a new community's contracts, in a module light enough for the CLI's
argument parser to import (:mod:`gateway.chain.deploy` pulls in web3)."""

SETTLE_DELAY_S = 3600  # seconds after an interval before anyone may settle it
PRICE = 150 * 10**12  # token units per Wh: 0.15 token/kWh at 18 decimals

"""Wattshare gateway: receives signed meter readings over CoAP, verifies and stores them.

Run it with ``wattshare gateway run`` (or ``python -m gateway run``); see docs/gateway.md
and :mod:`gateway.app` for how the modules fit together.
"""

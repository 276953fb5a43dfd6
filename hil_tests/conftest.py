"""Fixtures of the hardware-in-the-loop suite: the same scenarios run against emulated
devices (default) or boards on a bench, always through the real gateway and chain.

``WATTSHARE_HIL=emulated`` (default): each device is the real firmware in the MicroPython
VM (:class:`hil_tests.devices.EmulatedDevice`), its meter the simulator over loopback
TCP, its flash a temporary folder; power cuts are process kills.
``WATTSHARE_HIL=bench``: boards on a bench (``hil_tests/bench_mode.py``, docs/hil.md).

Sites (:class:`hil_tests.rig.Site`) are expensive (a gateway, contracts deployed, a chain
node): ``chain_site`` is one per test module; ``gateway_site`` (no chain: the device to
gateway path only) is shared by the whole session. Each scenario makes its own devices;
they are powered off when it ends. When a scenario fails, the logs of every part (the
gateway, ``chain run``, the devices' consoles, ``gateway status``) are attached to its
report.
"""

from __future__ import annotations

import pytest

from hil_tests.rig import Site

SITE_FIXTURES = ("chain_site", "gateway_site")


@pytest.fixture(scope="module")
def chain_site(tmp_path_factory):
    site = Site(tmp_path_factory.mktemp("chain-site"), chain=True)
    try:
        yield site
    finally:
        site.close()


@pytest.fixture(scope="session")
def gateway_site(tmp_path_factory):
    site = Site(tmp_path_factory.mktemp("gateway-site"), chain=False)
    try:
        yield site
    finally:
        site.close()


@pytest.fixture(autouse=True)
def _devices_off_after_each_scenario(request):
    yield
    for name in SITE_FIXTURES:
        if name in request.fixturenames:
            site = request.getfixturevalue(name)
            site.power_off()
            site.restore()


def require(site: Site, capability: str) -> None:
    """Skip the scenario, saying why, when the site's devices lack ``capability``."""
    if capability not in site.devices.capabilities:
        pytest.skip(f"these devices cannot do {capability!r} "
                    f"(they can: {', '.join(sorted(site.devices.capabilities))})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for name in SITE_FIXTURES:
            site = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            if site is not None:
                report.sections.append((f"logs of every part ({name})",
                                        site.logs.report(quiet=True)))

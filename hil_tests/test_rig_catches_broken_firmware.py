"""The rig's own test: a deliberately broken firmware must fail a scenario.

Three patched copies of the firmware (the repository's files copied to a temporary
folder, a line or two changed) run the power-cut scenario of test_power_cuts.py on the
real gateway: one skips the signature (signs with zeros), one starts its sequence
numbers from 0 at every boot (and its spool takes them), one drops its spool at
reboot. Each must fail :func:`check_power_cuts` for its own reason; the unpatched
copy, run the same way, passes (so the copying itself breaks nothing)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hil_tests.conftest import require
from hil_tests.devices import firmware_copy
from hil_tests.rig import Link
from hil_tests.test_power_cuts import check_power_cuts, power_cuts


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: the line to break is gone ({old!r}): update this test"
    path.write_text(text.replace(old, new, 1))


def skip_signature(fw: Path) -> None:
    _patch(fw / "app" / "reading_signer.py", "return p256.sign(self._priv, to_be_signed)",
           "return bytes(64)  # BROKEN: no signature")


def reuse_sequence(fw: Path) -> None:
    _patch(fw / "app" / "sequence.py", "self._next = max(start, floor)",
           "self._next = 0  # BROKEN: numbers start again at every boot")
    # the spool refuses a number not above its newest: that guard goes too
    _patch(fw / "app" / "spool.py", "if seq <= self.max_seq:", "if False:  # BROKEN")


def drop_spool(fw: Path) -> None:
    _patch(fw / "app" / "spool.py", "    def _recover(self):\n",
           "    def _recover(self):\n"
           "        for name in self._st.names():  # BROKEN: the spool is lost at boot\n"
           "            if name.startswith(_PREFIX) or name == _HEAD:\n"
           "                self._st.remove(name)\n")


CASES = [
    ("intact", None, None),
    ("skips signatures", skip_signature, "the gateway refused readings"),
    ("reuses sequence numbers", reuse_sequence, "a sequence number was used twice"),
    ("drops its spool", drop_spool, "spooled readings lost"),
]


def test_a_broken_firmware_fails_the_power_cut_scenario(gateway_site, tmp_path):
    site = gateway_site
    require(site, "firmware_override")
    runs = []
    for n, (name, patch, _) in enumerate(CASES):
        device_mjs = firmware_copy(tmp_path / f"firmware-{n}", patch)
        link = Link(site)
        dev = site.add(f"firmware that {name}" if patch else "intact firmware copy",
                       "sdm120ct", "household", seed=30 + n, gateway_port=link.port,
                       firmware=device_mjs)
        runs.append((name, dev, link))

    errors: dict[str, BaseException] = {}

    def run(name, dev, link):
        try:
            power_cuts(site, dev, link, cuts=3, seed=11)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors[name] = e

    threads = [threading.Thread(target=run, args=r) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors  # the scenario itself ran through for every copy

    for (name, _, reason), (_, dev, _) in zip(CASES, runs, strict=True):
        if reason is None:
            check_power_cuts(site, dev)
            continue
        assert any("BROKEN" in p.read_text() for p in
                   Path(dev.device_mjs).parent.parent.parent.glob("firmware/app/*.py"))
        with pytest.raises(AssertionError) as failed:
            check_power_cuts(site, dev)
        assert reason in str(failed.value), (name, str(failed.value))

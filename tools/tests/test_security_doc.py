"""docs/security.md maps every threat to the tests that show its defence, or says "open":
the tests it names exist, so the page cannot quietly point at nothing."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "security.md").read_text()
THREATS = ["forged meter", "cloned meter", "replayed or delayed reading",
           "compromised gateway", "malicious member", "lying RPC node", "Wi-Fi eavesdropper",
           "stolen gateway SD card", "stolen meter", "flood of datagrams"]
SOURCES = [p for top in ("gateway", "firmware", "tools", "contracts", "hil_tests")
           for p in (ROOT / top).rglob("test_*.py")]


def _defined(name):
    return any(re.search(rf"^(async )?def {name}\(", p.read_text(), re.M) for p in SOURCES)


def test_every_threat_has_a_row_with_a_test_or_says_open():
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| \[([^\]]+)\]\(#[^)]*\) \|.*$",
                                                           DOC, re.M)}
    assert set(rows) == set(THREATS)
    for threat, row in rows.items():
        cells = [c.strip() for c in row.strip("|").split("|")]
        tests = re.findall(r"`(test_\w+)`", cells[2])
        assert tests, f"{threat}: no test named"
        for name in tests:
            assert _defined(name), f"{threat}: {name} is not a test"
        assert cells[3], f"{threat}: say what is open, or '-'"


def test_every_test_the_page_names_exists_where_it_says():
    for path, name in re.findall(r"`([\w/]+\.py)::(test_\w+)`", DOC):
        source = (ROOT / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{path}::{name}"
    for name in set(re.findall(r"`(test_\w+)`", DOC)):
        assert _defined(name), name
    for threat in THREATS:  # each has its own section, with what is open when something is
        assert re.search(rf"^### {re.escape(threat)}$", DOC, re.M | re.I), threat

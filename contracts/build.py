"""Compile the Wattshare contracts with vyper's Python API, offline.

Writes out/contracts/<Name>.json with abi, bytecode (deploy), bytecode_runtime,
storage and transient layouts, and prints the storage layouts: the gateway batcher
uses the ABI, the light-client proof tool the slot of Settlement.roots.

    .venv/bin/python -m contracts.build            # from the repository root
    .venv/bin/python contracts/build.py --quiet    # write files, print nothing
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vyper.cli.vyper_compile import compile_files

CONTRACTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = CONTRACTS_DIR.parent
OUT_DIR = REPO_ROOT / "out" / "contracts"
CONTRACT_NAMES = ("CommunityToken", "MeterRegistry", "Settlement")
_FORMATS = ("abi", "bytecode", "bytecode_runtime", "layout")


def compile_contract(name: str) -> dict:
    """Compile contracts/<name>.vy; return abi, bytecode, bytecode_runtime, layout."""
    path = CONTRACTS_DIR / f"{name}.vy"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such contract (known: {', '.join(CONTRACT_NAMES)})")
    result = compile_files([str(path)], _FORMATS, paths=[str(CONTRACTS_DIR)])
    (output,) = result.values()
    return {
        "contract": name,
        "compiler": "vyper 0.4.3",
        "abi": output["abi"],
        "bytecode": output["bytecode"],
        "bytecode_runtime": output["bytecode_runtime"],
        "layout": output["layout"],
    }


def build(out_dir: Path = OUT_DIR) -> dict[str, dict]:
    """Compile every contract and write <out_dir>/<Name>.json; return the artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    for name in CONTRACT_NAMES:
        artifact = compile_contract(name)
        (out_dir / f"{name}.json").write_text(json.dumps(artifact, indent=1) + "\n")
        artifacts[name] = artifact
    return artifacts


def storage_slot(artifact: dict, variable: str) -> int:
    """Storage slot of a top-level variable (e.g. Settlement `roots`)."""
    layout = artifact["layout"]["storage_layout"]
    if variable not in layout:
        raise KeyError(f"{artifact['contract']}: no storage variable {variable!r}")
    return layout[variable]["slot"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    parser.add_argument("--quiet", action="store_true", help="do not print the layouts")
    args = parser.parse_args(argv)
    artifacts = build(args.out)
    if not args.quiet:
        for name, artifact in artifacts.items():
            size = (len(artifact["bytecode_runtime"]) - 2) // 2
            print(f"== {name}: {size} bytes runtime -> {args.out / (name + '.json')}")
            print(json.dumps(artifact["layout"]["storage_layout"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

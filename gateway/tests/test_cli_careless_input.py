"""Careless input at the command line, tried as a new user would: every case ends with
one line saying what to do, never a Python traceback (found under attack, issue 15)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gw_testbed import MeterKey, register, write_config

from gateway import config as gwconfig
from tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
WATTSHARE = [sys.executable, "-m", "tools.cli"]
BUNDLE_SEEDS = ROOT / "tools" / "fuzz" / "corpus" / "bundle"


def wattshare(*argv, stdout=subprocess.PIPE, env=None):
    return subprocess.run([*WATTSHARE, *map(str, argv)], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), timeout=120)


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    # `wattshare gateway status | head`: the reader is gone before the output is written.
    cfg = write_config(tmp_path)
    register(cfg, *[MeterKey() for _ in range(3)])
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = wattshare("gateway", "status", "--config", cfg.path, stdout=write_end)
    finally:
        os.close(write_end)
    no_traceback(proc)
    assert proc.returncode == 1 and proc.stderr == ""


def test_run_on_a_folder_without_a_database_refuses_and_says_init(tmp_path, capsys):
    cfg = write_config(tmp_path)  # a gateway.toml, but no `gateway init`
    assert main(["gateway", "run", "--config", str(cfg.path)]) == 2
    err = capsys.readouterr().err
    assert "holds no database" in err and "wattshare gateway init" in err
    assert not cfg.db_path.exists()  # and no empty database was left behind
    proc = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(cfg.path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "wattshare gateway init" in proc.stderr


def test_export_allocations_with_from_after_to_says_so(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["export-allocations", "--config", str(cfg.path), "--from", "5", "--to", "3",
                 "-o", str(tmp_path / "a.csv")]) == 2
    assert "--from 5 is after --to 3" in capsys.readouterr().err
    assert not (tmp_path / "a.csv").exists()


def test_verify_a_bundle_whose_key_is_off_the_curve(tmp_path, capsys):
    script = json.loads(max(BUNDLE_SEEDS.iterdir(), key=lambda p: p.stat().st_size
                            ).read_text())
    data = script["bundle"]
    key = bytearray.fromhex(data["pubkey"])
    key[-1] ^= 1
    data["pubkey"] = key.hex()
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(data))
    # refused before any node is asked: the URL names nothing that listens
    nowhere = "http://127.0.0.1:9"
    assert main(["verify", "--bundle", str(path), "--rpc", nowhere]) == 1
    assert "'pubkey' is not a P-256 public key" in capsys.readouterr().err
    path.write_text("{not json")
    assert main(["verify", "--bundle", str(path), "--rpc", nowhere]) == 1
    assert "cannot read the bundle" in capsys.readouterr().err


def test_a_fault_of_ours_is_one_line_unless_debugging(tmp_path, monkeypatch):
    # Any unexpected exception in a command: one line that says it is a bug, and how to
    # see the traceback.
    from gateway import cli

    def broken(args):
        raise KeyError("no such thing")

    class Args:
        func = staticmethod(broken)

    monkeypatch.delenv(cli.ENV_DEBUG, raising=False)
    assert cli.run_command(Args()) == cli.EXIT_INTERNAL
    monkeypatch.setenv(cli.ENV_DEBUG, "1")
    with pytest.raises(KeyError):
        cli.run_command(Args())


def test_a_config_that_is_not_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / gwconfig.CONFIG_NAME).mkdir()
    assert main(["gateway", "status", "--config", str(tmp_path / gwconfig.CONFIG_NAME)]) == 2
    assert gwconfig.CONFIG_NAME in capsys.readouterr().err

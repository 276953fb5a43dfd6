"""docs/firmware.md's accelerated run, as written there: the real gateway, meter
simulator, emulated device and chain link, every process on the one simulated clock,
settle a meter's energy on chain through the live path (not a replay).

The doc's shell block is run by bash with only paths and ports changed; the test then
watches the chain (the Settlement contract's events) until an interval settles with the
meter's energy, and the device's readings went forward in time the whole way."""

import json
import os
import re
import subprocess
import time

from hil_tests.rig import REPO, ProcessLogs, chain_events, free_tcp_port, free_udp_port

DOC = REPO / "docs" / "firmware.md"


def doc_block(heading: str) -> str:
    """The first ```sh block after ``heading`` in docs/firmware.md."""
    text = DOC.read_text()
    rest = text[text.index(heading):]
    m = re.search(r"```sh\n(.*?)```", rest, re.S)
    assert m, f"no ```sh block after {heading!r} in {DOC}"
    return m.group(1)


def test_the_documented_accelerated_path_settles_energy(tmp_path):
    script = doc_block("### Accelerated time")
    assert "--speed 60" in script and "wattshare chain run" in script
    coap, http, meter = free_udp_port(), free_tcp_port(), free_tcp_port()
    script = (script.replace("/tmp/ws", str(tmp_path / "ws"))
              .replace("/tmp/m1", str(tmp_path / "m1"))
              .replace("127.0.0.1:5020", f"127.0.0.1:{meter}")
              .replace("127.0.0.1:5683", f"127.0.0.1:{coap}")
              .replace("wattshare gateway init --data " + str(tmp_path / "ws"),
                       f"wattshare gateway init --data {tmp_path / 'ws'} "
                       f"--coap-port {coap} --http-port {http}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATTSHARE_")}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{REPO / 'node_modules' / '.bin'}:{env['PATH']}"
    log = tmp_path / "run.log"
    logs = ProcessLogs(tmp_path)
    with open(log, "w") as out:
        # bash -x with the time each command started (PS4 is not taken from the
        # environment when running as root)
        script = 'PS4="+ \\$(date +%T.%3N) "\n' + script
        run = subprocess.Popen(["bash", "-euxc", script], cwd=REPO, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    logs.add("doc block (bash -x)", log)
    data = tmp_path / "ws"
    try:
        settled = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            time.sleep(1.0)
            url_file = data / "anvil.url"  # written by `chain run` for other commands
            if url_file.exists():
                settled = [f for name, f in chain_events(url_file.read_text().strip(), data)
                           if name == "Settled" and f["meters"] == 1]
                if settled:
                    break
        assert run.poll() is None, "the doc's commands stopped early"
        assert settled, "no interval settled with the meter's energy within 120 s"
        first = settled[0]
        assert first["import_wh"] + first["export_wh"] > 0, first

        # what a user sees: the gateway took every reading, none refused; the device's
        # timestamps only went forward (no counter_decrease gap possible)
        status = json.loads(subprocess.run(
            ["wattshare", "gateway", "status", "--json", "--config", str(data / "gateway.toml")],
            env=env, capture_output=True, text=True, check=True).stdout)
        (device,) = status["devices"]
        assert device["readings"] >= 90 and not status["rejects"], status
        stamps = [int(m.group(1)) for m in re.finditer(r"spooled seq=\d+ t=(\d+)",
                                                        log.read_text())]
        assert stamps == sorted(stamps) and len(stamps) >= 90
        chain_log = log.read_text()
        assert re.search(r"built interval \d+ \([^)]+\): \d+ readings, \d+ signed boundary "
                         r"readings, 1 meters, 0 gaps", chain_log)
    except BaseException:
        logs.report()
        raise
    finally:
        _stop_group(run)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the doc's processes (bash ran them in its own session), then SIGKILL."""
    import signal

    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            time.sleep(0.3)  # the group's other members
        except subprocess.TimeoutExpired:
            continue



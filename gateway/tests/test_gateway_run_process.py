"""The gateway as systemd starts it (the ExecStart line of
gateway/deploy/wattshare-gateway.service, `python -m gateway run`) answers readings on
every CoAP front end, its status page on: the path of a Raspberry Pi, which in-process
tests do not take (their session has imported every module before the service starts).
Written after the aiocoap front end of a `python -m gateway run` process stopped
answering (it had imported aiohttp lazily once aiocoap served; `python -m bench ingest`'s
aiocoap run got no answer): this test did not reproduce that failure here, the benchmark
did; it keeps the service unit's command tested on both front ends."""

import asyncio
import json
import shlex
import subprocess
import sys
import time

import pytest
from gw_testbed import FRONT_ENDS, MeterKey, RawUdp, coap_datagram

from gateway import registry
from tools import toml_schema
from tools.local_site import REPO, GatewayProcess


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_gateway_process_answers_readings_on_each_front_end(tmp_path, front_end):
    from gateway import config as gwconfig

    meter = MeterKey()

    def configure(path):
        # the front end, and the meter registered before the gateway starts (as a
        # technician does), with the CLI
        doc, _ = toml_schema.read(path)
        doc["coap"] = dict(doc.get("coap", {}), front_end=front_end)
        doc["ingest"] = dict(doc.get("ingest", {}), processes=2)
        doc["log"] = {"level": "warning"}
        path.write_text(gwconfig.render(doc))
        subprocess.run([sys.executable, "-m", "tools.cli", "device", "add", "--config",
                        str(path), "--id", meter.device_id.hex(), "--pubkey",
                        meter.pubkey.hex(), "--model", "sdm120ct", "--owner",
                        "0x" + "11" * 20, "--label", "Roof"], check=True, capture_output=True)

    gw = GatewayProcess(tmp_path / "gw", configure=configure)
    gw.stop()  # started with `wattshare gateway run`: now as the service unit starts it
    unit = (REPO / "gateway" / "deploy" / "wattshare-gateway.service").read_text()
    command = shlex.split(next(x for x in unit.splitlines() if x.startswith("ExecStart=")
                               ).split("=", 1)[1])
    assert command[0] == "/opt/wattshare/.venv/bin/python", command
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - closed below
    service = subprocess.Popen([sys.executable, *command[1:]], env=gw.env, cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not gw.healthy():
        assert service.poll() is None and time.monotonic() < deadline, (
            (tmp_path / "service.log").read_text())
        time.sleep(0.1)
    try:

        async def send():
            udp = RawUdp(gw.coap_port)
            codes = []
            try:
                for n in range(3):  # one after the other, as a device sends
                    datagram = coap_datagram(n + 1, token=bytes((n + 1,)),
                                             payload=meter.batch(range(8 * n + 1, 8 * n + 9)))
                    codes.append(str((await udp.exchange(datagram, timeout=10)).code))
            finally:
                udp.close()
            return codes

        codes = asyncio.run(send())
        assert all(c.startswith("2.04") for c in codes), codes
        shown = json.loads(gw.wattshare("device", "show", meter.device_id.hex(),
                                        "--json").stdout)
        assert shown["state"]["readings"] == 24 and shown["state"]["last_seq"] == 24
        assert registry.parse_model("sdm120ct") == shown["model"]
    except BaseException:
        print((tmp_path / "service.log").read_text())
        raise
    finally:
        service.terminate()
        service.wait(15)
        log.close()

"""Structured logs and the rate limiting of reject logs."""

import asyncio
import io
import json
import logging

from gw_testbed import MeterKey, coap_client, coap_request, register, running_gateway, write_config
from wattcore import exchange

from gateway import logs


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_rate_limiter_once_per_key_per_window_and_counts_suppressed():
    clock = FakeClock()
    limiter = logs.RateLimiter(window=60, global_max=100, clock=clock)
    assert limiter.allow("a") == 0
    assert limiter.allow("a") is None
    assert limiter.allow("b") == 0
    clock.now += 30
    assert limiter.allow("a") is None
    clock.now += 31
    assert limiter.allow("a") == 2  # two suppressed since the last line


def test_rate_limiter_global_cap_and_bounded_keys():
    clock = FakeClock()
    limiter = logs.RateLimiter(window=60, global_max=3, max_keys=5, clock=clock)
    allowed = [k for k in range(10) if limiter.allow(k) is not None]
    assert allowed == [0, 1, 2]
    clock.now += 61
    assert [k for k in range(20, 30) if limiter.allow(k) is not None] == [20, 21, 22]
    assert len(limiter._keys) <= 5


def test_json_and_key_value_lines():
    record = logging.LogRecord("wattshare.x", logging.WARNING, __file__, 1, "request rejected",
                               None, None)
    record.fields = {"reason": "bad-signature", "detail": "a b=c"}
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["msg"] == "request rejected" and line["reason"] == "bad-signature"
    assert line["level"] == "warning" and line["ts"].endswith("Z")
    kv = logs.KeyValueFormatter().format(record)
    assert 'msg="request rejected"' in kv and "reason=bad-signature" in kv
    assert 'detail="a b=c"' in kv


def test_a_misbehaving_meter_is_logged_once_per_minute_but_counted_every_time(tmp_path):
    meter = MeterKey()
    cfg = write_config(tmp_path)
    register(cfg, meter)
    stream = io.StringIO()
    logs.setup("info", "json", stream)

    async def scenario():
        async with running_gateway(cfg, http=False) as gw, coap_client() as ctx:
            for seq in range(1, 11):
                forged = bytearray(meter.reading(seq))
                forged[-1] ^= 1
                code, _, _ = await coap_request(ctx, gw.coap_port, "r",
                                                exchange.encode_batch([bytes(forged)]))
                assert code == "4.01"
            for _ in range(5):  # garbage from the same peer: one more line for the peer
                await coap_request(ctx, gw.coap_port, "r", b"\xff")
            return gw.metrics.rejected.values

    try:
        counts = asyncio.run(scenario())
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    rejected = [x for x in lines if x["msg"] == "request rejected"]
    assert [(x["reason"], x["device"]) for x in rejected] == [
        ("bad-signature", meter.device_id.hex()), ("cbor", "")]
    assert counts == {"bad-signature": 10, "cbor": 5}

"""Modbus faults from the meter simulator, through the real firmware and gateway: every
faulty poll ends in a signed reading that says so and carries no measurement (never a
good-looking value), and the gateway's status shows the faults (``gateway status
--json``: per device its fault count and last fault's flags)."""

ST = {"crc": 0x0004, "no_reply": 0x0002, "exception": 0x0008, "wrong_address": 0x0010,
      "nan": 0x0020, "backwards": 0x0040, "reversed": 0x0800}
FLAG_NAMES = {0x0002: "METER_NO_REPLY", 0x0004: "METER_CRC", 0x0008: "METER_EXCEPTION",
              0x0010: "METER_WRONG_ADDRESS", 0x0020: "VALUE_NAN",
              0x0040: "COUNTER_BACKWARDS", 0x0800: "CT_REVERSED"}
FAULT_MASK = 0x09FE


def _check_fault(reading: dict, flag: int) -> None:
    assert reading["st"] & flag, reading
    assert reading["p"] is None and reading["ei"] is None and reading["ee"] is None, reading


def test_each_fault_gives_a_flagged_reading_without_values(gateway_site):
    site = gateway_site
    always = [
        ("sdm120ct", "household", ["crc"], ST["crc"], {}),
        # a meter that never answers costs every attempt's timeout (real milliseconds in
        # the emulator): short ones keep the poll inside the watchdog at 300 x
        ("sdm120ct", "household", ["no-reply"], ST["no_reply"], {"reply_timeout_ms": 50}),
        ("sdm120ct", "household", ["exception=2"], ST["exception"], {}),
        ("sdm120ct", "household", ["wrong-address=9"], ST["wrong_address"],
         {"reply_timeout_ms": 50}),
        ("sdm630ct", "school", ["nan=power_W"], ST["nan"], {}),
        ("pzem004t-v3", "household", ["nan=voltage_dV"], ST["nan"], {}),
        # a CT clamped backwards on a site that never exports
        ("sdm120ct", "household", ["reversed-ct"], ST["reversed"], {"exports_allowed": False}),
    ]
    specs = [((f"fault {faults[0]} on {meter_id}", meter_id, profile),
              dict(faults=faults, frozen=True, **extra))
             for meter_id, profile, faults, _, extra in always]
    # a CT reversed for one poll only: its counters jump, the value is refused
    specs.append((("fault reversed-ct@3", "sdm120ct", "pv-producer"),
                  dict(faults=["reversed-ct@3"], frozen=True)))
    devices = site.add_many(specs)
    for dev in devices:
        dev.start()
    for dev in devices:
        enough = 5 if dev is devices[-1] else 3
        assert dev.wait_for(lambda d=dev, n=enough: site.device_status(d.label)["readings"]
                            >= n, 60), (dev.label, dev.output()[-10:])
        dev.power_cut()

    for dev, (_, _, faults, flag, _) in zip(devices, always, strict=False):
        readings, st = site.quiet_readings(dev.label)
        for r in readings:
            _check_fault(r, flag)
        assert st["faults"] == st["readings"] == len(readings), (faults, st)
        assert FLAG_NAMES[flag] in st["last_fault_flags"], (faults, st)
        assert st["rejects"] == {}, st

    transient = devices[-1]
    readings, st = site.quiet_readings(transient.label)
    _check_fault(readings[2], ST["backwards"])
    for i, r in enumerate(readings):
        if i != 2:
            assert r["st"] & FAULT_MASK == 0 and r["p"] is not None, (i, r)
    assert st["faults"] == 1, st

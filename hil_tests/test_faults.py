"""Every injected meter fault ends in a signed reading that says so and carries no
measurement: never a good-looking value."""

ST = {"crc": 0x0004, "no_reply": 0x0002, "exception": 0x0008, "wrong_address": 0x0010,
      "nan": 0x0020, "backwards": 0x0040, "reversed": 0x0800}
MEASUREMENTS = (5, 6, 7, 8, 9, 10, 11)


def _check_fault(reading, flag):
    assert reading.fields[4] & flag, reading.fields
    assert not any(k in reading.fields for k in MEASUREMENTS), reading.fields


def test_each_fault_gives_a_flagged_reading_without_values(rig):
    always = [
        ("sdm120ct", "household", ["crc"], ST["crc"], {}),
        ("sdm120ct", "household", ["no-reply"], ST["no_reply"], {}),
        ("sdm120ct", "household", ["exception=2"], ST["exception"], {}),
        ("sdm120ct", "household", ["wrong-address=9"], ST["wrong_address"], {}),
        ("sdm630ct", "school", ["nan=power_W"], ST["nan"], {}),
        ("pzem004t-v3", "household", ["nan=voltage_dV"], ST["nan"], {}),
        # a CT clamped backwards on a site that never exports
        ("sdm120ct", "household", ["reversed-ct"], ST["reversed"], {"exports_allowed": False}),
    ]
    started = []
    for meter_id, profile, faults, flag, extra in always:
        _, port = rig.meter(meter_id, profile, faults=faults, frozen=True)
        started.append((rig.device(meter_id, port, **extra).start(), flag, faults))
    # a CT reversed for one poll only: its counters jump, the value is refused
    _, port = rig.meter("sdm120ct", "pv-producer", faults=["reversed-ct@3"], frozen=True)
    transient = rig.device("sdm120ct", port).start()

    for dev, flag, faults in started:
        assert dev.wait_for(lambda d=dev: len(rig.endpoint.readings(d.device_id)) >= 3, 40), \
            (faults, dev.output()[-10:])
        dev.kill()
        for r in rig.endpoint.readings(dev.device_id):
            _check_fault(r, flag)
    assert transient.wait_for(
        lambda: len(rig.endpoint.readings(transient.device_id)) >= 5, 40)
    transient.kill()
    readings = rig.endpoint.readings(transient.device_id)
    _check_fault(readings[2], ST["backwards"])
    for i, r in enumerate(readings):
        if i != 2:
            assert r.fields[4] & 0x09FE == 0 and 7 in r.fields, (i, r.fields)
    assert not rig.endpoint.log.violations

# Reads one meter over Modbus RTU and turns its registers into reading fields,
# or into fault flags with no measurement at all.
#
# Ports:
#   bus.write(frame)                     send one request (the adapter drives the
#                                        RS-485 driver-enable pin around it)
#   await bus.read(n, timeout_ms) -> bytes   up to n bytes; fewer on timeout
#   bus.flush_input()                    drop bytes left from an earlier reply
#   await clock.sleep_ms(ms)
#
# Each block of the meter map is one request: wait the 3.5-character silent
# interval, send, read the 5 header bytes, then the rest of the frame. A request
# that fails (timeout, CRC, exception, wrong slave) is retried up to `retries`
# times; when every attempt failed the flags of all attempts are reported.
#
# Plausibility (evaluate): a NaN/infinite float or an all-ones integer register
# (the PZEM's "no value") -> ST_VALUE_NAN, as is a value the protocol cannot
# carry; an energy counter below its last good value -> ST_COUNTER_BACKWARDS;
# |power| above phases * 253 V * CT rating, or current above 1.2 x CT rating ->
# ST_POWER_OVER_RATING; the meter's alarm register -> ST_METER_ALARM; power whose
# sign contradicts the counters on two polls in a row, or any export on a site
# configured with exports_allowed = false -> ST_CT_REVERSED. A faulty poll
# returns no values, and does not move the counter baseline.
from wattcore import modbus_rtu, reading
from wattcore.const import const
from wattcore.errors import (
    ModbusAddressError,
    ModbusCrcError,
    ModbusError,
    ModbusExceptionReply,
)

# meter map field name -> reading field name
FIELD_NAMES = {
    "voltage_dV": "u",
    "current_mA": "i",
    "power_W": "p",
    "frequency_cHz": "f",
    "power_factor_milli": "pf",
    "import_Wh": "ei",
    "export_Wh": "ee",
}
MAX_VOLTAGE_DV = const(2530)  # 230 V + 10 %, in 0.1 V: per-phase power bound
_CURRENT_MARGIN = (12, 10)  # current may exceed the CT rating by 20 % before a fault
_SIGN_NOISE_W = const(50)  # below this, the power sign says nothing
_CONTRADICTIONS = const(2)  # polls in a row before a sign contradiction is a fault
_ALL_ONES = {"u16": 0xFFFF, "u32le_words": 0xFFFFFFFF, "u32be_words": 0xFFFFFFFF}
_BITS_PER_CHAR = const(11)
_LINK_NAMES = {
    reading.ST_METER_NO_REPLY: "no_reply",
    reading.ST_METER_CRC: "crc_errors",
    reading.ST_METER_EXCEPTION: "exceptions",
    reading.ST_METER_WRONG_ADDRESS: "wrong_address",
}


class MeterPoller:
    def __init__(self, bus, clock, meter, slave, ct_rating_A, retries=2, reply_timeout_ms=500,
                 exports_allowed=True):
        self._bus = bus
        self._clock = clock
        self._meter = meter
        self._slave = slave
        self._function = meter["function"]
        self._baud = meter["baud"]
        self._max_power = meter["phases"] * ct_rating_A * MAX_VOLTAGE_DV // 10
        self._max_current = ct_rating_A * 1000 * _CURRENT_MARGIN[0] // _CURRENT_MARGIN[1]
        self._retries = retries
        self._reply_timeout = reply_timeout_ms
        self._gap_ms = (modbus_rtu.silent_interval_us(self._baud) + 999) // 1000
        self._exports_allowed = exports_allowed
        self._last = None  # counters of the last good poll
        self._contradictions = 0
        self.requests = 0
        # link quality, per request sent (commissioning reports it): each failed attempt
        # counts under its failure; retries counts the attempts after a failure
        self.link = {"retries": 0, "crc_errors": 0, "no_reply": 0, "exceptions": 0,
                     "wrong_address": 0}

    async def poll(self):
        # -> (values: dict reading field -> int, st: fault flags)
        blocks = []
        for start, count in self._meter["blocks"]:
            data, flags = await self._read_block(start, count)
            if data is None:
                return {}, flags
            blocks.append(data)
        return self.evaluate(blocks)

    async def _read_block(self, start, count):
        frame_ms = (5 + 2 * count) * _BITS_PER_CHAR * 1000 // self._baud
        flags = 0
        for attempt in range(self._retries + 1):
            if attempt:
                self.link["retries"] += 1
            data, failed = await self._attempt(self._slave, self._function, start, count,
                                               self._reply_timeout, frame_ms)
            if not failed:
                return data, 0
            flags |= failed
            self.link[_LINK_NAMES[failed]] += 1
        return None, flags

    async def _attempt(self, slave, function, start, count, reply_timeout, frame_ms):
        # One request. -> (register data, 0) or (None, the one ST_METER_* flag)
        await self._clock.sleep_ms(self._gap_ms)
        self._bus.flush_input()
        self._bus.write(modbus_rtu.read_request(slave, function, start, count))
        self.requests += 1
        head = await self._bus.read(modbus_rtu.HEADER_LENGTH, reply_timeout)
        if len(head) < modbus_rtu.HEADER_LENGTH:
            return None, reading.ST_METER_CRC if head else reading.ST_METER_NO_REPLY
        more = modbus_rtu.reply_length_after_header(head, count)
        rest = await self._bus.read(more, frame_ms + reply_timeout) if more else b""
        if len(rest) < more:
            return None, reading.ST_METER_CRC  # a frame cut short is a garbled frame
        try:
            return modbus_rtu.parse_read_reply(head + rest, slave, function, count), 0
        except ModbusCrcError:
            return None, reading.ST_METER_CRC
        except ModbusExceptionReply:
            return None, reading.ST_METER_EXCEPTION
        except ModbusAddressError:
            return None, reading.ST_METER_WRONG_ADDRESS
        except ModbusError:
            return None, reading.ST_METER_CRC

    async def answers(self, slave, timeout_ms):
        # True when something at `slave` answers a one-register read of the first
        # block (a Modbus exception is an answer too): the commissioning bus scan.
        start = self._meter["blocks"][0][0]
        frame_ms = 7 * _BITS_PER_CHAR * 1000 // self._baud
        data, failed = await self._attempt(slave, self._function, start, 1, timeout_ms,
                                           frame_ms)
        return data is not None or failed == reading.ST_METER_EXCEPTION

    async def serial_number(self):
        # The meter's serial number (meter map "serial_number": [function, register,
        # kind]), or None when the map has none or no attempt got it.
        sn = self._meter.get("serial_number")
        if sn is None:
            return None
        function, register, kind = sn
        count = 1 if kind == "u16" else 2
        frame_ms = (5 + 2 * count) * _BITS_PER_CHAR * 1000 // self._baud
        for _ in range(self._retries + 1):
            data, _ = await self._attempt(self._slave, function, register, count,
                                          self._reply_timeout, frame_ms)
            if data is not None:
                return modbus_rtu.decode_value(data, 0, kind, 1)
        return None

    def evaluate(self, blocks):
        # Register data of each block -> (values, st). Pure apart from the
        # counter baseline it keeps between good polls.
        values = {}
        st = 0
        fields = self._meter["fields"]
        for name in fields:
            index, offset, kind, num, den = fields[name]
            data = blocks[index]
            if kind in _ALL_ONES:
                raw = (modbus_rtu.u16(data, offset) if kind == "u16"
                       else modbus_rtu.decode_value(data, offset, kind, 1))
                if raw == _ALL_ONES[kind] and name != "alarm":
                    st |= reading.ST_VALUE_NAN
                    continue
            value = modbus_rtu.decode_value(data, offset, kind, (num, den))
            if name == "alarm":
                if value:
                    st |= reading.ST_METER_ALARM
                continue
            if value is None:
                st |= reading.ST_VALUE_NAN
                continue
            field = FIELD_NAMES[name]
            lo, hi = reading.FIELDS[field][1], reading.FIELDS[field][2]
            if value < lo or value > hi:
                st |= reading.ST_VALUE_NAN  # not a value the protocol can carry
                continue
            values[field] = value
        if not st & reading.ST_FAULT_MASK:
            st |= self._plausibility(values)
        if st & reading.ST_FAULT_MASK:
            return {}, st
        self._last = (values.get("ei"), values.get("ee"))
        return values, st

    def _plausibility(self, values):
        st = 0
        p = values.get("p", 0)
        ei = values.get("ei")
        ee = values.get("ee")
        if p > self._max_power or -p > self._max_power:
            st |= reading.ST_POWER_OVER_RATING
        if values.get("i", 0) > self._max_current:
            st |= reading.ST_POWER_OVER_RATING
        last = self._last
        dei = dee = None
        if last is not None:
            if ei is not None and last[0] is not None:
                dei = ei - last[0]
                if dei < 0:
                    st |= reading.ST_COUNTER_BACKWARDS
            if ee is not None and last[1] is not None:
                dee = ee - last[1]
                if dee < 0:
                    st |= reading.ST_COUNTER_BACKWARDS
        if not self._exports_allowed and (p < -_SIGN_NOISE_W or (dee is not None and dee > 0)):
            st |= reading.ST_CT_REVERSED
        contradiction = (dei is not None and dee is not None
                         and ((p > _SIGN_NOISE_W and dee > 0 and dei == 0)
                              or (p < -_SIGN_NOISE_W and dei > 0 and dee == 0)))
        self._contradictions = self._contradictions + 1 if contradiction else 0
        if self._contradictions >= _CONTRADICTIONS:
            st |= reading.ST_CT_REVERSED
        return st

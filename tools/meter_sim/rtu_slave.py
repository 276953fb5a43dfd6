"""Modbus RTU slave side, sans-IO: request frames in, reply frames out.

``RequestParser`` splits a byte stream (serial line, pty, TCP) into CRC-checked request
frames; ``MeterSlave`` answers the frames addressed to it from a ``MeterModel`` and
applies the ``FaultPlan``. The CRC is pymodbus's (``FramerRTU.compute_CRC``), an
implementation independent of the firmware's ``wattcore.modbus_rtu``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from pymodbus.framer.rtu import FramerRTU

from tools.board_config import FUNCTIONS
from tools.errors import MeterRequestError
from tools.meter_sim.faults import FaultPlan
from tools.meter_sim.model import ILLEGAL_DATA_VALUE, ILLEGAL_FUNCTION, MeterModel

log = logging.getLogger("tools.meter_sim")

MAX_FRAME = 256  # Modbus RTU ADU limit
MIN_FRAME = 4  # address, function, CRC
_FIXED_LENGTH = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8, 8: 8, 7: 4, 11: 4, 12: 4, 17: 4,
                 0x42: 4}  # 0x42: PZEM energy reset
_WITH_BYTE_COUNT = (15, 16)  # 7 header bytes, then byte count, then data and CRC


def crc_bytes(data: bytes) -> bytes:
    """The two CRC bytes to append to ``data`` (low byte first on the wire)."""
    return FramerRTU.compute_CRC(data).to_bytes(2, "big")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= MIN_FRAME and crc_bytes(frame[:-2]) == frame[-2:]


def _length_at(buf: bytearray, start: int) -> int | None:
    """Frame length implied by the function code at ``start``; None if unknown yet."""
    function = buf[start + 1]
    if function in _FIXED_LENGTH:
        return _FIXED_LENGTH[function]
    if function in _WITH_BYTE_COUNT:
        return 9 + buf[start + 6] if len(buf) - start > 6 else None
    return None


class RequestParser:
    """Bounded reassembly of RTU request frames from a byte stream.

    Bytes that do not start a CRC-valid frame (line noise, a truncated frame) are
    skipped when a valid frame follows them; at most MAX_FRAME bytes are kept.
    """

    def __init__(self):
        self._buf = bytearray()
        self.discarded = 0

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a frame (at most MAX_FRAME)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete request frames now available."""
        self._buf += data
        frames = []
        while (frame := self._next_frame()) is not None:
            frames.append(frame)
        if len(self._buf) > MAX_FRAME:
            drop = len(self._buf) - MAX_FRAME
            del self._buf[:drop]
            self.discarded += drop
        return frames

    def _next_frame(self) -> bytes | None:
        buf = self._buf
        for start in range(len(buf) - MIN_FRAME + 1):
            length = _length_at(buf, start)
            available = len(buf) - start
            candidates: Iterable[int]
            if length is not None:
                candidates = [length] if length <= available else []
            elif start == 0:  # unknown function: any CRC-valid length (answered with 01)
                candidates = range(MIN_FRAME, min(available, MAX_FRAME) + 1)
            else:
                candidates = []
            for n in candidates:
                frame = bytes(buf[start:start + n])
                if crc_ok(frame):
                    del buf[:start + n]
                    self.discarded += start
                    return frame
        return None


class MeterSlave:
    """A simulated meter on the bus at ``address``: answers read requests from ``model``."""

    def __init__(self, model: MeterModel, address: int, faults: FaultPlan | None = None):
        self.model = model
        self.address = address
        self.faults = faults or FaultPlan()
        self.requests = 0
        self.stats: Counter[str] = Counter()

    def handle(self, frame: bytes) -> bytes | None:
        """Reply frame for one CRC-valid request frame, or None (not for us, or a fault).

        A meter with a general address (PZEM: 0xF8) answers it too, as on a link with one
        meter; the reply carries the address the request was sent to."""
        if frame[0] not in (self.address, self.model.meter.general_address):
            # another slave's, or a broadcast: never answered
            self.stats["other_address"] += 1
            return None
        self.requests += 1
        number = self.requests
        active = self.faults.decide(number)
        for name in active.names:
            self.stats[f"fault:{name}"] += 1
        function = frame[1]
        try:
            pdu = self._serve(function, frame[2:-2], active.reversed_ct, active.nan_fields)
        except MeterRequestError as exc:
            self.stats["exception_reply"] += 1
            log.info("request %d: %s", number, exc)
            pdu = bytes([function | 0x80, exc.code])
        if active.exception_code is not None:
            pdu = bytes([function | 0x80, active.exception_code])
        if active.no_reply:
            log.info("request %d: fault no-reply", number)
            return None
        address = frame[0] if active.reply_address is None else active.reply_address
        reply = bytes([address]) + pdu
        crc = crc_bytes(reply)
        if active.crc:
            crc = bytes(b ^ 0xFF for b in crc)
        self.stats["replies"] += 1
        if active.names:
            log.info("request %d: faults %s", number, ", ".join(active.names))
        return reply + crc

    def _serve(self, function: int, data: bytes, reversed_ct: bool,
               nan_fields: tuple[str, ...]) -> bytes:
        if function not in FUNCTIONS:
            raise MeterRequestError(ILLEGAL_FUNCTION, f"function {function} is not served")
        if len(data) != 4:
            raise MeterRequestError(ILLEGAL_DATA_VALUE, "read request of the wrong length")
        address = int.from_bytes(data[0:2], "big")
        count = int.from_bytes(data[2:4], "big")
        words = self.model.read_registers(function, address, count, reversed_ct, nan_fields,
                                          slave=self.address)
        log.debug("request %d: function %d 0x%04X+%d", self.requests, function, address, count)
        return bytes([function, 2 * count]) + b"".join(w.to_bytes(2, "big") for w in words)

# The spool: a flash-backed, append-only queue of signed readings, oldest first.
# A reading leaves it only when a gateway response acknowledges it.
#
# Layout (all in one storage folder):
#   spNNNNNN   segment files, numbered upwards; each holds up to SEGMENT_RECORDS
#              records [len u16][seq u64][tag 4][data], tag = sha256(seq||data)[:4]
#   head       sealed (segment u32, offset u32): the first reading not yet
#              acknowledged; written atomically (write-temp-then-rename)
#   quarantine readings the gateway can never accept (kept for a technician)
#
# Power cuts: an append cut short leaves a torn last record; opening the spool
# finds it by its tag and truncates the segment to the last whole record. A head
# write is atomic, so the head is the old or the new one: at worst readings that
# were acknowledged are sent again (the gateway acknowledges the same bytes
# again without storing them twice); none is lost. Segments wholly before the
# head are deleted after the head moved past them.
#
# Full spool (max_segments segments): the oldest segment is dropped before the
# next reading is stored, and that reading carries ST_SPOOL_OVERFLOW. Sampling
# never stops: the newest readings matter most for settlement, and the flag
# documents the gap. Default 136 segments x 64 readings = 8704 readings, 24 h at
# one reading per 10 s, about 1.3 MB of flash.
from wattcore.const import const

from app import record_tag

SEGMENT_RECORDS = const(64)
DEFAULT_MAX_SEGMENTS = const(136)
_HDR = const(14)  # len 2 + seq 8 + tag 4
_MAX_RECORD = const(1024)
_QUARANTINE_MAX = const(16384)
_HEAD = "head"
_QUARANTINE = "quarantine"
_PREFIX = "sp"


def _seg_name(n):
    return "%s%06d" % (_PREFIX, n)


def _encode_record(seq, data):
    body = seq.to_bytes(8, "big") + data
    return len(data).to_bytes(2, "big") + body[:8] + record_tag.tag(body) + data


class Entry:
    # A spooled reading, and the position just after it (where the head moves
    # when it is acknowledged).
    def __init__(self, seq, data, next_pos):
        self.seq = seq
        self.data = data
        self.next_pos = next_pos


class Spool:
    def __init__(self, storage, max_segments=DEFAULT_MAX_SEGMENTS, log=None):
        self._st = storage
        self._max_segments = max_segments
        self._log = log or (lambda msg: None)
        self.dropped = 0  # readings dropped because the spool was full
        self.max_seq = -1  # newest seq stored (-1: none)
        self._recover()

    # ---- opening -------------------------------------------------------------

    def _recover(self):
        segs = []
        for name in self._st.names():
            if name.startswith(_PREFIX) and len(name) == 8 and name[2:].isdigit():
                segs.append(int(name[2:]))
        segs.sort()
        head = self._read_head()
        if head is None:
            head = (segs[0] if segs else 0, 0)
        for n in segs:
            if n < head[0]:
                self._st.remove(_seg_name(n))  # acknowledged, deletion was cut short
        segs = [n for n in segs if n >= head[0]]
        self._segs = segs
        self._tail = segs[-1] if segs else head[0]
        # the tail segment: count whole records, truncate a torn last one
        count, size, max_seq = self._scan(self._tail, 0)
        stored = self._st.size(_seg_name(self._tail))
        if stored > size:
            self._log("spool: torn record in %s, %d bytes dropped" % (_seg_name(self._tail),
                                                                     stored - size))
            self._st.write_atomic(_seg_name(self._tail),
                                  self._st.read(_seg_name(self._tail), 0, size))
        self._tail_count = count
        self._tail_size = size
        if count:
            self.max_seq = max_seq
        elif len(segs) > 1:
            self.max_seq = self._scan(segs[-2], 0)[2]
        if head[0] == self._tail and head[1] > size:
            head = (head[0], size)
        self._head = head
        # readings waiting: those of the head segment after the head, those of
        # the full segments between, those of the tail
        pending = 0
        for n in segs:
            if n == self._tail:
                pending += count - (self._scan(n, 0, head[1])[0] if n == head[0] else 0)
            elif n == head[0]:
                pending += self._scan(n, head[1])[0]
            else:
                pending += SEGMENT_RECORDS
        self._pending = pending

    def _read_head(self):
        data = record_tag.unseal(self._st.read(_HEAD))
        if data is None or len(data) != 8:
            return None
        return (int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big"))

    def _read_record(self, seg, off):
        # -> (seq, data, next offset), or None at the end or at a torn record
        name = _seg_name(seg)
        hdr = self._st.read(name, off, _HDR)
        if hdr is None or len(hdr) < _HDR:
            return None
        n = int.from_bytes(hdr[:2], "big")
        if n > _MAX_RECORD:
            return None
        data = self._st.read(name, off + _HDR, n)
        if data is None or len(data) != n:
            return None
        if record_tag.tag(hdr[2:10] + data) != hdr[10:14]:
            return None
        return int.from_bytes(hdr[2:10], "big"), data, off + _HDR + n

    def _scan(self, seg, off, stop=-1):
        # -> (records, end offset of the last whole record, last seq) from off
        count = 0
        last = -1
        while stop < 0 or off < stop:
            rec = self._read_record(seg, off)
            if rec is None:
                break
            last = rec[0]
            off = rec[2]
            count += 1
        return count, off, last

    # ---- state -----------------------------------------------------------------

    def __len__(self):
        return self._pending

    def segments(self):
        return self._tail - self._head[0] + 1

    # ---- writing ---------------------------------------------------------------

    def make_room(self):
        # Call before storing a reading; True when older readings were dropped
        # (the next reading then carries ST_SPOOL_OVERFLOW).
        dropped = False
        needs_new = self._tail_count >= SEGMENT_RECORDS
        while self.segments() + (1 if needs_new else 0) > self._max_segments:
            seg = self._head[0]
            lost = self._scan(seg, self._head[1])[0]
            self._set_head((seg + 1, 0))
            self.dropped += lost
            self._pending -= lost
            self._log("spool: full, dropped %d oldest readings" % lost)
            dropped = True
        return dropped

    def append(self, seq, data):
        if seq <= self.max_seq:
            raise ValueError("spool: seq %d not above %d" % (seq, self.max_seq))
        if self._tail_count >= SEGMENT_RECORDS:
            self._tail += 1
            self._tail_count = 0
            self._tail_size = 0
            self._segs.append(self._tail)
        rec = _encode_record(seq, data)
        self._st.append(_seg_name(self._tail), rec)
        if not self._segs or self._segs[-1] != self._tail:
            self._segs.append(self._tail)
        self._tail_count += 1
        self._tail_size += len(rec)
        self._pending += 1
        self.max_seq = seq

    # ---- reading and acknowledging ---------------------------------------------

    def peek(self, n):
        # Up to n oldest readings as Entry objects, oldest first.
        out = []
        seg, off = self._head
        while len(out) < n and seg <= self._tail:
            rec = self._read_record(seg, off)
            if rec is None:
                if seg == self._tail:
                    break
                size = self._st.size(_seg_name(seg))
                if off < size:
                    # corrupt record inside an older segment: the rest of it is lost
                    self._log("spool: corrupt record in %s at %d, skipping the segment"
                              % (_seg_name(seg), off))
                seg, off = seg + 1, 0
                continue
            seq, data, off = rec
            out.append(Entry(seq, data, (seg, off)))
        return out

    def ack_through(self, entries, seq):
        # Drop the peeked entries up to and including `seq`; returns how many.
        last = None
        count = 0
        for e in entries:
            if e.seq > seq:
                break
            last = e
            count += 1
        if last is not None:
            self._set_head(last.next_pos)
            self._pending -= count
        return count

    def quarantine(self, entry):
        # Move the oldest reading aside: the gateway can never accept it.
        if (self._st.size(_QUARANTINE) + len(entry.data)) < _QUARANTINE_MAX:
            self._st.append(_QUARANTINE, _encode_record(entry.seq, entry.data))
        self._log("spool: reading seq=%d quarantined" % entry.seq)
        self._set_head(entry.next_pos)
        self._pending -= 1

    def _set_head(self, pos):
        seg, off = pos
        # past the end of a finished segment: point at the start of the next one
        if seg < self._tail and off >= self._st.size(_seg_name(seg)):
            seg, off = seg + 1, 0
        old = self._head[0]
        pos = seg.to_bytes(4, "big") + off.to_bytes(4, "big")
        self._st.write_atomic(_HEAD, record_tag.seal(pos))
        self._head = (seg, off)
        if seg > self._tail:
            self._tail = seg
            self._tail_count = 0
            self._tail_size = 0
        for n in range(old, seg):
            self._st.remove(_seg_name(n))
        self._segs = [n for n in self._segs if n >= seg]

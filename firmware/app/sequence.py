# Sequence numbers: strictly increasing for the device's lifetime, never reused,
# across resets and power cuts, without a flash write per reading.
#
# Numbers are handed out in blocks. Before the first number of a block is used,
# the block's end ("next block start") is persisted; after a reset the device
# starts at the persisted value, so the rest of an interrupted block is skipped,
# never reused. Flash writes: one per BLOCK numbers.
#
# The value is kept in two slots written alternately (each write atomic and
# sealed with a tag). If a slot is unreadable, the device cannot tell whether
# it was the newest, so it skips one more block.
from app import record_tag
from app.errors import StorageError

DEFAULT_BLOCK = 1000
_SLOTS = ("seq.0", "seq.1")


def _decode(blob):
    data = record_tag.unseal(blob)
    if data is None or len(data) != 8:
        return None
    return int.from_bytes(data, "big")


class SequenceAllocator:
    # floor: a number known to be free (e.g. the spool's newest seq + 1).
    def __init__(self, storage, block=DEFAULT_BLOCK, floor=0, log=None):
        self._storage = storage
        self._block = block
        values = []
        damaged = False
        newest_slot = 1  # so that a fresh device writes slot 0 first
        for i in range(len(_SLOTS)):
            blob = storage.read(_SLOTS[i])
            if blob is None:
                continue
            value = _decode(blob)
            if value is None:
                damaged = True
            else:
                if not values or value > max(values):
                    newest_slot = i
                values.append(value)
        if damaged and not values:
            raise StorageError("sequence: both slots %s are corrupt; refusing to reuse numbers"
                               % (_SLOTS,))
        start = max(values) if values else 0
        if damaged:
            start += block
            if log:
                log("sequence: a slot was corrupt, skipping to %d" % start)
        self._next = max(start, floor)
        self._end = self._next  # nothing reserved yet: the first next() persists
        # overwrite the slot that does not hold the largest value
        self._slot = newest_slot ^ 1

    def next(self):
        if self._next >= self._end:
            end = self._next + self._block
            self._storage.write_atomic(
                _SLOTS[self._slot], record_tag.seal(end.to_bytes(8, "big")))
            self._slot ^= 1
            self._end = end
        n = self._next
        self._next = n + 1
        return n

    def peek(self):
        # the number next() will return
        return self._next

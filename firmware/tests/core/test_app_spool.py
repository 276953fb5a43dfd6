from app import spool as spool_mod
from app.sequence import SequenceAllocator
from app.spool import SEGMENT_RECORDS, Spool
from app_fakes import Lcg, MemoryStorage, PowerCut


def _data(seq, salt=0):
    return b"reading %d/%d " % (seq, salt) + bytes([seq & 0xFF]) * (100 + seq % 40)


def _all(sp):
    return [(e.seq, e.data) for e in sp.peek(1000000)]


def test_append_peek_ack_oldest_first():
    st = MemoryStorage()
    sp = Spool(st)
    for seq in range(10):
        sp.append(seq, _data(seq))
    batch = sp.peek(8)
    assert [e.seq for e in batch] == list(range(8))
    assert sp.ack_through(batch, 4) == 5
    assert [e.seq for e in sp.peek(8)] == [5, 6, 7, 8, 9]
    assert len(sp) == 5
    reopened = Spool(st)
    assert [s for s, _ in _all(reopened)] == [5, 6, 7, 8, 9]
    assert reopened.max_seq == 9


def test_torn_last_record_is_dropped_on_open():
    st = MemoryStorage()
    sp = Spool(st)
    for seq in range(3):
        sp.append(seq, _data(seq))
    name = "sp000000"
    st.files[name] = st.files[name][:-7]
    reopened = Spool(st)
    assert _all(reopened) == [(0, _data(0)), (1, _data(1))]
    reopened.append(5, _data(5))
    assert [s for s, _ in _all(Spool(st))] == [0, 1, 5]


def test_segments_roll_over_and_acked_ones_are_deleted():
    st = MemoryStorage()
    sp = Spool(st)
    n = 3 * SEGMENT_RECORDS + 5
    for seq in range(n):
        sp.append(seq, _data(seq))
    assert sp.segments() == 4
    while len(sp):
        batch = sp.peek(8)
        sp.ack_through(batch, batch[-1].seq)
    assert len(sp) == 0
    assert [name for name in st.files if name.startswith("sp")] == ["sp000003"]
    sp.append(n, _data(n))
    assert [s for s, _ in _all(Spool(st))] == [n]


def test_full_spool_drops_the_oldest_segment_and_says_so():
    st = MemoryStorage()
    sp = Spool(st, max_segments=2)
    flags = []
    for seq in range(3 * SEGMENT_RECORDS):
        flags.append(sp.make_room())
        sp.append(seq, _data(seq))
    assert flags.count(True) == 1 and flags[2 * SEGMENT_RECORDS]
    seqs = [s for s, _ in _all(sp)]
    assert seqs == list(range(SEGMENT_RECORDS, 3 * SEGMENT_RECORDS))
    assert sp.dropped == SEGMENT_RECORDS


def test_quarantine_moves_the_oldest_aside():
    st = MemoryStorage()
    sp = Spool(st)
    for seq in range(3):
        sp.append(seq, _data(seq))
    sp.quarantine(sp.peek(1)[0])
    assert [s for s, _ in _all(Spool(st))] == [1, 2]
    assert _data(0) in st.files["quarantine"]


def test_corrupt_head_file_resends_instead_of_losing():
    st = MemoryStorage()
    sp = Spool(st)
    for seq in range(4):
        sp.append(seq, _data(seq))
    sp.ack_through(sp.peek(2), 1)
    st.files["head"] = b"\x01\x02"
    assert [s for s, _ in _all(Spool(st))] == [0, 1, 2, 3]


def test_power_cuts_lose_no_spooled_reading_and_reuse_no_seq():
    # 1000 power cuts at random storage writes, over the spool and the sequence
    # allocator together, with a gateway that stores what it acknowledges.
    rng = Lcg(2024)
    st = MemoryStorage(seed=99)
    gateway = {}  # seq -> bytes
    spooled = {}  # seq -> bytes, once append() returned
    allocated = set()
    cuts = 0
    boot = 0
    while cuts < 1000:
        boot += 1
        st.cut_at = st.writes + 1 + rng.below(12)
        try:
            sp = Spool(st, max_segments=1000)
            alloc = SequenceAllocator(st, block=16, floor=sp.max_seq + 1)
            pending = _all(sp)
            seqs = [s for s, _ in pending]
            assert seqs == sorted(seqs)
            for seq in spooled:
                assert seq in gateway or seq in seqs, "lost seq %d" % seq
            for seq, data in pending:
                assert spooled.get(seq, data) == data
            while True:
                if rng.below(3):
                    seq = alloc.next()
                    assert seq not in allocated, "reused seq %d" % seq
                    allocated.add(seq)
                    data = _data(seq, boot)
                    sp.make_room()
                    sp.append(seq, data)
                    spooled[seq] = data
                else:
                    batch = sp.peek(1 + rng.below(8))
                    if not batch:
                        continue
                    for e in batch:
                        assert gateway.get(e.seq, e.data) == e.data
                        gateway[e.seq] = e.data
                    sp.ack_through(batch, batch[-1 - rng.below(len(batch))].seq)
        except PowerCut:
            cuts += 1
    assert len(spooled) > 1000
    assert len(gateway) > 500
    assert spool_mod.SEGMENT_RECORDS * 2 < max(spooled)  # many segments were used

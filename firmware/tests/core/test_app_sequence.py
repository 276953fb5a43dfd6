from app.errors import StorageError
from app.sequence import SequenceAllocator
from app_fakes import MemoryStorage, PowerCut
from support import raises


def test_numbers_increase_across_restarts_without_reuse():
    st = MemoryStorage()
    seen = []
    for _ in range(5):
        alloc = SequenceAllocator(st, block=10)
        for _ in range(7):
            seen.append(alloc.next())
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert seen[0] == 0


def test_one_flash_write_per_block():
    st = MemoryStorage()
    alloc = SequenceAllocator(st, block=100)
    for _ in range(1000):
        alloc.next()
    assert st.writes == 10


def test_restart_jumps_to_the_next_block():
    st = MemoryStorage()
    alloc = SequenceAllocator(st, block=100)
    assert [alloc.next() for _ in range(3)] == [0, 1, 2]
    assert SequenceAllocator(st, block=100).next() == 100


def test_floor_from_the_spool_wins():
    st = MemoryStorage()
    assert SequenceAllocator(st, block=100, floor=5000).next() == 5000


def test_a_corrupt_slot_skips_one_more_block():
    st = MemoryStorage()
    alloc = SequenceAllocator(st, block=100)
    for _ in range(150):
        alloc.next()  # slots hold 100 and 200
    st.files["seq.1"] = b"\x00garbage\x00\x00\x00"
    assert SequenceAllocator(st, block=100).next() >= 200


def test_both_slots_corrupt_refuses_to_guess():
    st = MemoryStorage()
    st.files["seq.0"] = b"x" * 12
    st.files["seq.1"] = b"y" * 12
    assert raises(StorageError, SequenceAllocator, st)


def test_cut_while_reserving_never_reuses():
    st = MemoryStorage(seed=7)
    used = set()
    for k in range(1, 40):
        st.cut_at = st.writes + 1 + k % 3
        try:
            alloc = SequenceAllocator(st, block=4)
            while True:
                n = alloc.next()
                assert n not in used
                used.add(n)
        except PowerCut:
            pass
    assert len(used) > 20

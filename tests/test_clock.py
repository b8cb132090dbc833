"""The real clock's view of the kernel: whether the wall clock is synchronized."""

from __future__ import annotations

import ctypes
import gc

from edge.clock import SystemClock, kernel_clock_synced


def test_synchronized_is_what_adjtimex_says() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    state = libc.adjtimex(ctypes.create_string_buffer(512))  # modes = 0: a read
    expected = None if state < 0 else state != 5  # TIME_ERROR: not synchronized
    assert kernel_clock_synced() is expected
    assert SystemClock().synchronized() is expected


def test_asking_again_makes_no_ctypes_class() -> None:
    """It is asked for every payload: libc is opened once, not a CDLL (and its function-pointer
    class) per call, which cost about 1 % of the processing stage's instructions."""
    kernel_clock_synced()
    before = sum(isinstance(o, type) for o in gc.get_objects())
    for _ in range(20):
        kernel_clock_synced()
    assert sum(isinstance(o, type) for o in gc.get_objects()) == before

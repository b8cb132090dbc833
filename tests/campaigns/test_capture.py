"""Rings of raw frames: bounded by time, frames and bytes; what a cap pushes out is counted."""

from __future__ import annotations

from edge.campaigns.capture import FRAME_OVERHEAD, Capture, FrameRing


def test_keeps_its_time_and_cuts_windows() -> None:
    ring = FrameRing(keep=1.0, max_frames=1000, max_bytes=1_000_000)
    for i in range(30):
        ring.push(i / 10, bytes([i]))
    assert ring.oldest() == 1.9 and ring.overflow == 0  # 2.9 - 1.0, nothing over a cap
    assert [d[0] for _, d in ring.window(2.0, 2.2)] == [20, 21, 22]
    assert [t for t, _ in ring.window(2.0, 2.2)] == [2.0, 2.1, 2.2]
    assert ring.bytes == len(ring) * (1 + FRAME_OVERHEAD)


def test_caps_in_frames_and_bytes_are_counted() -> None:
    ring = FrameRing(keep=100.0, max_frames=5, max_bytes=1_000_000)
    for i in range(8):
        ring.push(float(i), b"x")
    assert (len(ring), ring.overflow, ring.oldest()) == (5, 3, 3.0)
    ring = FrameRing(keep=100.0, max_frames=1000, max_bytes=3 * (8 + FRAME_OVERHEAD))
    for i in range(10):
        ring.push(float(i), b"12345678")
    assert (len(ring), ring.overflow) == (3, 7)
    assert ring.bytes <= ring.max_bytes


def test_a_capture_window() -> None:
    capture = Capture("c", trigger=10.0, before=2.0, after=0.5, condition="x > 1")
    assert (capture.start, capture.end) == (8.0, 10.5)

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


def test_frames_appended_by_chunks_are_packed_trimmed_and_cut() -> None:
    """As the engine feeds a ring: appends, then one settle per chunk. Data of mixed lengths,
    blocks of many frames: windows are exactly the frames kept, bytes what they cost."""
    ring = FrameRing(keep=1.0, max_frames=1000, max_bytes=1_000_000)
    frames = [(n * 0.01, bytes([n % 256]) * (1 + n % 3)) for n in range(1500)]
    for start in range(0, len(frames), 70):
        for t, data in frames[start : start + 70]:
            ring.times.append(t)
            ring.datas.append(bytearray(data))
        ring.settle()
    horizon = frames[-1][0] - 1.0
    kept = [(t, d) for t, d in frames if t >= horizon]
    assert list(ring.window(-1.0, 100.0)) == kept
    assert ring.oldest() == kept[0][0] and len(ring) == len(kept)
    assert ring.bytes == sum(len(d) + FRAME_OVERHEAD for _, d in kept)
    assert list(ring.window(12.0, 12.05)) == [(t, d) for t, d in kept if 12.0 <= t <= 12.05]
    # caps: the oldest frames go first, counted (those older than keep are not: forgotten)
    ring.max_frames = 40
    ring.times.append(15.0)
    ring.datas.append(b"\x01")
    ring.settle()
    recent = sum(1 for t, _ in kept if t >= 14.0) + 1
    assert len(ring) == 40 and ring.overflow == recent - 40
    assert [t for t, _ in ring.window(0.0, 100.0)][-1] == 15.0

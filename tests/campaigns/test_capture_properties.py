"""FrameRing against a plain model (hypothesis): a list of every (time, data) frame appended, of
which the ring keeps a suffix, trimmed at each settle as a queue would (the leading frames older
than the last frame's time minus ``keep``, then the oldest over the caps, counted)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from edge.campaigns.capture import BLOCK_FRAMES, FRAME_OVERHEAD, FrameRing

Frame = tuple[float, bytes]

#: Time steps between frames: many equal times, some jumps; the negative ones step back (taken
#: as their absolute value when a run's times never step back).
STEPS = (0.0, 0.0, 0.0, 0.001, 0.01, 0.1, 0.25, 1.0, 5.0, -0.01, -0.5, -3.0, -100.0)
#: Data lengths (0, classic CAN, CAN FD): a burst cycles through one to three of them, so that
#: blocks of one length and blocks of mixed lengths are both packed.
LENGTHS = (0, 1, 3, 8, 8, 8, 64)

#: A burst of frames: how many, the time steps and data lengths they cycle through, whether the
#: data is a bytearray (as python-can gives it) rather than bytes.
Burst = tuple[int, list[float], list[int], bool]
burst_steps = st.lists(st.sampled_from(STEPS), min_size=1, max_size=4)
burst_lengths = st.lists(st.sampled_from(LENGTHS), min_size=1, max_size=3)
bursts = st.tuples(st.integers(1, 150), burst_steps, burst_lengths, st.booleans())
#: Bursts of at least 40 frames: a few of them make several blocks.
long_bursts = st.tuples(st.integers(40, 150), burst_steps, burst_lengths, st.booleans())
keeps = st.sampled_from([0.0, 0.05, 0.5, 2.0, 10.0, 1e9])
frame_caps = st.one_of(st.integers(1, 200), st.integers(200, 2000), st.just(10**9))
byte_caps = st.one_of(st.integers(0, 4000), st.integers(4000, 40_000), st.just(10**12))


def cost(frames: list[Frame]) -> int:
    """Bytes of ``frames`` as the caps count them."""
    return sum(len(data) + FRAME_OVERHEAD for _, data in frames)


class Model:
    """Every frame appended, in order; the ring should keep ``appended[first:]``.

    A settle trims (from the oldest: older than the last frame's time minus ``keep``, then over
    the caps) when the ring has unpacked frames, its last ones (those appended since it last
    packed, a block once there are BLOCK_FRAMES). When time steps back, a cap may leave an older
    frame first: a settle with nothing new appended then forgets it by time only if frames are
    still unpacked. Either is what the ring promises ("may be forgotten"); the model does what
    the ring does, so that counts can be compared exactly."""

    def __init__(self, keep: float, max_frames: int, max_bytes: int) -> None:
        self.keep, self.max_frames, self.max_bytes = keep, max_frames, max_bytes
        self.appended: list[Frame] = []
        self.first = 0
        self.bytes = 0  # cost of the kept frames
        self.unpacked = 0  # the last kept frames, appended since the ring last packed
        self.overflow = 0

    @property
    def kept(self) -> list[Frame]:
        return self.appended[self.first :]

    def append(self, t: float, data: bytes) -> None:
        self.appended.append((t, data))
        self.bytes += len(data) + FRAME_OVERHEAD
        self.unpacked += 1

    def _drop(self) -> None:
        self.bytes -= len(self.appended[self.first][1]) + FRAME_OVERHEAD
        self.first += 1
        self.unpacked = min(self.unpacked, len(self.appended) - self.first)

    def settle(self) -> None:
        if not self.unpacked:
            return
        if self.unpacked >= BLOCK_FRAMES:
            self.unpacked = 0
        horizon = self.horizon()
        while self.first < len(self.appended) and self.appended[self.first][0] < horizon:
            self._drop()
        while self.first < len(self.appended) and (
            len(self.appended) - self.first > self.max_frames or self.bytes > self.max_bytes
        ):
            self._drop()
            self.overflow += 1

    def horizon(self) -> float:
        return self.appended[-1][0] - self.keep


class Feeder:
    """A ring and its model fed the same frames, checked against each other."""

    def __init__(self, keep: float, max_frames: int, max_bytes: int, monotonic: bool) -> None:
        self.ring = FrameRing(keep, max_frames, max_bytes)
        self.model = Model(keep, max_frames, max_bytes)
        self.monotonic = monotonic
        self.t = 1000.0
        self.serial = 0
        self.settles = 0

    def frames(self, burst: Burst) -> list[tuple[float, bytes | bytearray]]:
        """The frames of a burst, after the last one: each data unique (its serial number)."""
        count, steps, lengths, mutable = burst
        out: list[tuple[float, bytes | bytearray]] = []
        for i in range(count):
            step = steps[i % len(steps)]
            self.t += abs(step) if self.monotonic else step
            length = lengths[i % len(lengths)]
            data = (self.serial.to_bytes(4, "little") * (length // 4 + 1))[:length]
            self.serial += 1
            out.append((self.t, bytearray(data) if mutable and i % 2 else data))
        return out

    def append(self, t: float, data: bytes | bytearray) -> None:
        """As the engine does: straight into the ring's lists (no settle)."""
        self.ring.times.append(t)
        self.ring.datas.append(data)
        self.model.append(t, bytes(data))

    def settle(self) -> None:
        self.ring.settle()
        self.model.settle()
        self.check_settled()

    def push(self, t: float, data: bytes | bytearray) -> None:
        self.ring.push(t, data)
        self.model.append(t, bytes(data))
        self.model.settle()
        self.check_settled()

    def feed_as_the_engine(self, burst: Burst) -> None:
        """Appends, and a settle whenever BLOCK_FRAMES frames are waiting."""
        for t, data in self.frames(burst):
            self.append(t, data)
            if len(self.ring.times) >= BLOCK_FRAMES:
                self.settle()

    def all_frames(self) -> list[Frame]:
        return list(self.ring.window(-math.inf, math.inf))

    def check_settled(self) -> None:
        """The promises of a ring just settled, then the model's exact account."""
        ring, model = self.ring, self.model
        self.settles += 1
        kept = self.all_frames()
        appended = model.appended
        # a contiguous suffix of what was appended, within the caps, its cost as counted
        assert len(ring) == len(kept)
        assert kept == appended[len(appended) - len(kept) :]
        assert len(ring) <= ring.max_frames and ring.bytes <= ring.max_bytes
        assert ring.bytes == cost(kept)
        assert ring.oldest() == (kept[0][0] if kept else None)
        assert len(ring.times) < BLOCK_FRAMES  # at most a block's worth unpacked
        if appended and self.monotonic:
            # never shorter than asked: a frame within keep is missing only when a cap pushed
            # it out (keeping it would break a cap), and time forgets only what is older
            horizon = model.horizon()
            first = len(appended) - len(kept)
            if first:
                t, data = appended[first - 1]
                if t >= horizon:
                    assert ring.overflow > 0
                    assert (
                        len(kept) + 1 > ring.max_frames
                        or ring.bytes + len(data) + FRAME_OVERHEAD > ring.max_bytes
                    )
            assert all(t >= horizon for t, _ in kept)
        # exactly what the model kept: forgotten by time as a queue would, caps counted
        assert kept == model.kept
        assert (ring.bytes, ring.overflow) == (model.bytes, model.overflow)
        assert len(ring.times) == model.unpacked
        n = len(kept)
        for i, j in ((0, n - 1), (n // 4, n // 2), (n // 2, n // 2), (n - 2, n - 1)):
            if 0 <= i < n:
                self.check_window(kept[i][0], kept[j][0])

    def check_window(self, start: float, end: float) -> None:
        """A window of what is kept now (frames appended since the last settle included)."""
        kept = self.model.kept
        assert len(self.ring) == len(kept)
        got = list(self.ring.window(start, end))
        times, datas = self.ring.cut(start, end)
        assert list(zip(times, datas, strict=True)) == got
        assert all(type(data) is bytes for data in datas)
        # in the order they came, also when time stepped back (blocks not ordered)
        assert got == [(t, data) for t, data in kept if start <= t <= end]

    def bounds(self, pick: tuple[int, int, float, float]) -> tuple[float, float]:
        """A window's start and end: around frames kept (their exact times often), or open."""
        i, j, di, dj = pick
        kept = self.model.kept
        if not kept:
            return -math.inf, math.inf
        a = kept[i % len(kept)][0] + di
        b = kept[j % len(kept)][0] + dj
        return (a, b) if i % 7 else (b, a)  # sometimes end before start: empty


picks = st.tuples(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.sampled_from([0.0, 0.0, -0.005, 0.005, -1.0, 1.0, -math.inf]),
    st.sampled_from([0.0, 0.0, -0.005, 0.005, -1.0, 1.0, math.inf]),
)


class RingMachine(RuleBasedStateMachine):
    """Random interleavings of appends, settles, pushes and the engine's feeding."""

    def __init__(self) -> None:
        super().__init__()
        self.feeder: Feeder

    @initialize(
        keep=keeps,
        max_frames=frame_caps,
        max_bytes=byte_caps,
        monotonic=st.booleans(),
    )
    def start(self, keep: float, max_frames: int, max_bytes: int, monotonic: bool) -> None:
        self.feeder = Feeder(keep, max_frames, max_bytes, monotonic)

    @rule(burst=bursts)
    def append(self, burst: Burst) -> None:
        for t, data in self.feeder.frames(burst):
            self.feeder.append(t, data)

    @rule()
    def settle(self) -> None:
        self.feeder.settle()

    @rule(burst=bursts)
    def push(self, burst: Burst) -> None:
        count, steps, lengths, mutable = burst
        for t, data in self.feeder.frames((min(count, 5), steps, lengths, mutable)):
            self.feeder.push(t, data)

    @rule(burst=bursts)
    def feed_as_the_engine(self, burst: Burst) -> None:
        self.feeder.feed_as_the_engine(burst)

    @rule(windows=st.lists(picks, min_size=1, max_size=4))
    def window(self, windows: list[tuple[int, int, float, float]]) -> None:
        for pick in windows:
            self.feeder.check_window(*self.feeder.bounds(pick))


TestRingMachine = RingMachine.TestCase
TestRingMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


@settings(max_examples=100, deadline=None)
@given(
    keep=keeps,
    max_frames=frame_caps,
    max_bytes=byte_caps,
    monotonic=st.booleans(),
    feed=st.lists(long_bursts, min_size=4, max_size=8),
    picks=st.lists(picks, min_size=5, max_size=10),
)
def test_many_blocks_fed_as_the_engine_feeds_them(
    keep: float,
    max_frames: int,
    max_bytes: int,
    monotonic: bool,
    feed: list[Burst],
    picks: list[tuple[int, int, float, float]],
) -> None:
    """Hundreds of frames (several blocks), a settle per BLOCK_FRAMES appended, a settle at the
    end: checked after every settle, then windows of the whole."""
    feeder = Feeder(keep, max_frames, max_bytes, monotonic)
    for burst in feed:
        feeder.feed_as_the_engine(burst)
    assert len(feeder.model.appended) >= 4 * 40
    feeder.settle()
    assert feeder.settles >= 2
    for pick in picks:
        feeder.check_window(*feeder.bounds(pick))


@settings(max_examples=100, deadline=None)
@given(
    pattern=st.lists(st.integers(0, 20), min_size=1, max_size=3),
    count=st.integers(1, 250),
    fit=st.integers(0, 130),
    slack=st.sampled_from([-1, 0, 0, 1, 7]),
    max_frames=st.one_of(st.integers(1, 150), st.just(10**9)),
    settle_every=st.sampled_from([1, 1, 5, BLOCK_FRAMES]),
)
def test_caps_are_met_to_the_byte(
    pattern: list[int], count: int, fit: int, slack: int, max_frames: int, settle_every: int
) -> None:
    """A byte cap of just about ``fit`` frames (data lengths cycling through ``pattern``): the
    fewest oldest frames are pushed out, counted, whether from a block or from the frames not
    packed yet, settled after every frame, every few or every block."""
    sizes = [pattern[n % len(pattern)] for n in range(count)]
    max_bytes = max(0, sum(length + FRAME_OVERHEAD for length in sizes[:fit]) + slack)
    feeder = Feeder(keep=1e9, max_frames=max_frames, max_bytes=max_bytes, monotonic=True)
    for n, length in enumerate(sizes, 1):
        feeder.append(float(n), bytes([n % 256]) * length)
        if n % settle_every == 0 or n == count:
            feeder.settle()
    assert feeder.ring.overflow == count - len(feeder.ring)
    if max_frames > count:  # the byte cap alone: as many frames as fit
        nxt = count - len(feeder.ring) - 1  # the newest frame pushed out
        assert nxt < 0 or feeder.ring.bytes + sizes[nxt] + FRAME_OVERHEAD > max_bytes


@settings(max_examples=60, deadline=None)
@given(
    times=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=150),
    keep=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
    settle_every=st.integers(1, 100),
)
def test_forgetting_by_time_stops_at_the_first_frame_not_older(
    times: list[float], keep: float, settle_every: int
) -> None:
    """Times in any order, no cap reached: after a settle, the ring starts where it started,
    or at the first frame after that not older than the newest frame's time minus keep."""
    ring = FrameRing(keep, max_frames=10**9, max_bytes=10**12)
    first = 0  # index of the oldest frame the ring should hold
    for n, t in enumerate(times, 1):
        ring.times.append(t)
        ring.datas.append(n.to_bytes(2, "little"))
        if n % settle_every == 0 or n == len(times):
            ring.settle()
            while times[first] < t - keep:
                first += 1
            datas = [i.to_bytes(2, "little") for i in range(first + 1, n + 1)]
            kept = list(zip(times[first:n], datas, strict=True))
            assert list(ring.window(-math.inf, math.inf)) == kept
            assert ring.oldest() == times[first] and len(ring) == n - first
            assert ring.overflow == 0  # forgetting by time is not counted


def test_a_step_back_keeps_the_frames_before_it_as_a_queue_would() -> None:
    ring = FrameRing(keep=2.0, max_frames=100, max_bytes=10_000)
    for t in (5.0, 1.0, 6.0):  # horizon 4.0: 5.0 is not older, so 1.0 behind it stays too
        ring.push(t, b"x")
    assert [t for t, _ in ring.window(-math.inf, math.inf)] == [5.0, 1.0, 6.0]
    ring.push(8.0, b"x")  # horizon 6.0: 5.0 and 1.0 go, 6.0 stops it
    assert (ring.oldest(), len(ring), ring.overflow) == (6.0, 2, 0)


def test_a_window_after_time_steps_back() -> None:
    """Every kept frame with start <= t <= end, also behind a later one: the clock stepped back
    from 1.0 to 0.0 and both frames are kept (the horizon is 0.0 - keep)."""
    ring = FrameRing(keep=1.0, max_frames=10, max_bytes=10_000)
    ring.push(1.0, b"a")
    ring.push(0.0, b"b")
    assert len(ring) == 2
    assert list(ring.window(0.0, 0.5)) == [(0.0, b"b")]

"""The fused path: decode, sample and batch frames in one pass, for the common case.

The processing stage has two paths that give the same rows and counters. The **plain path**
(``Processor._process_one``: decode, then sample, then
add to the batch, one step and one call after the other) is the reference: simple, and used for
everything uncommon. This module is the **fused path**, the hot loop :meth:`Processor.process`
runs: the same steps inlined for frames of messages that are not multiplexed and sampled
losslessly on change, which is most of the traffic (tests/processing/test_fused.py proves the two
paths equal on every corpus log; benchmarks/run.py measures the difference).

It is fused for speed, so it reaches into the processing stage's private state. Those hooks are
the stage's, not an API: the tables of each bus (``Processor._tracks_by_bus``; a
:class:`~edge.processing.decode.Track` for a message being decoded, a skip reason, or nothing yet),
the
tracks with pending rows (``_pending``), the size reservations (``_room``, ``_reserved``,
``_row_bounds``), and the plain steps it falls back on (``_process_one``, ``_sample``,
``_sample_now``, ``_settle_all``, ``_join``, ``_check``, ``_lose``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import can

from edge.processing.decode import UNKNOWN_ID, Tap, Track

if TYPE_CHECKING:
    from edge.processing.processor import Processor

__all__ = ["run"]


def run(p: Processor, frames: Sequence[can.Message]) -> None:
    """The hot loop of processor ``p``: its plain steps (decode, sample, add) inlined for the
    common case.

    A frame of a known bus and of a track whose sampling can be deferred (not multiplexed,
    lossless on-change sampling: ``Track.deferred``) is handled here: a repeated payload
    costs one comparison; a changed one is unpacked in one C call and, when its selected
    values differ from the previous frame's, appended to the track's pending rows, which
    :meth:`_settle` samples into the batch later, a column at a time (see TrackSampler).
    A track may carry a campaign condition's one input (``Track.campaign_input``): its raw
    value is tested where the frame is unpacked, and the campaign stage is told only when the
    test changes (``flip``); frames of other IDs campaigns use (a :class:`Tap`) are handed to
    it whole (``see``). Each pending row reserves its pessimistic size; when the reservations
    could have brought the batch's estimate to its next measurement (``_room``), or the batch
    may be old enough to close, :meth:`_check` settles and lets the batcher decide. Everything else
    (error and remote frames, multiplexed messages, other lengths, heartbeats due, other
    sampling modes) takes the plain steps. Both ways give the same rows
    (tests/processing/test_fused.py).

    ``spent`` counts reservations not yet in ``_reserved``: it is flushed there before any
    call that may settle or close, and ``room``/``age_due`` are read again after it.

    Fault isolation: a frame whose handling raises is lost and counted (:meth:`_lose`), its
    message falls back to the plain path, and the loop goes on with the next frame (the
    loop resumes on the same iterator, so the guard costs nothing per frame). A frame is
    counted decoded or repeated only once it has been handled whole.
    """
    decoder = p.decoder
    buses = p._tracks_by_bus
    skipped = decoder.skipped
    batcher = p.batcher
    bounds = p._row_bounds
    pending = p._pending
    decoded = repeated = rows = spent = unknown = plain = 0
    skips: list[str] = []  # why each skipped frame was (but unknown IDs), counted at the end
    room = p._room - p._reserved
    age_due = batcher.age_due
    last_channel: object = None  # the bus of the previous frame, and its tables:
    standard: dict[int, Any] = {}
    extended: dict[int, Any] = {}
    bus: Any = None
    # The campaign stage's frame(), for the frames of the IDs it taps (a Tap in the tables), and
    # flip(), for the condition inputs this loop reads itself (Track.campaign_input)
    see: Any = p.campaigns.frame if p.campaigns is not None else None
    flip: Any = p.campaigns.flip if p.campaigns is not None else None
    frames_left = iter(frames)
    sampling: Track | None = None  # a track the plain steps are sampling (see the handler)
    msg: Any = None
    track: Any  # a Track, a skip reason, a Tap... (annotated only: no store per frame)
    try:
        while True:
            try:
                for msg in frames_left:
                    if msg.is_error_frame or msg.is_remote_frame:
                        p._reserved += spent
                        spent = 0
                        plain += 1  # counted by the decoder itself
                        p._process_one(msg)
                        room, age_due = p._room - p._reserved, batcher.age_due
                        continue
                    channel = msg.channel
                    if channel is not last_channel:  # frames come in runs of one bus
                        entry = buses.get(channel)
                        if entry is None:
                            skips.append("unknown_bus")
                            continue
                        standard, extended, bus = entry
                        last_channel = channel
                    arbitration_id = msg.arbitration_id
                    tracks = extended if msg.is_extended_id else standard
                    track = tracks.get(arbitration_id)  # a Track, a skip reason, or None
                    if track is UNKNOWN_ID:  # the commonest skip (interned: by identity)
                        unknown += 1
                        continue
                    kind = track.__class__
                    if kind is not Track:
                        if kind is str:
                            skips.append(track)
                            continue
                        if track is None:  # first sight of this ID: set it up, look again
                            new = bus.track(arbitration_id, msg.is_extended_id)
                            if new is not None and new.shared:
                                p._reserved += spent
                                spent = 0
                                p._settle_all()  # its group's other track stops deferring
                                room, age_due = p._room - p._reserved, batcher.age_due
                            track = tracks.get(arbitration_id)
                            if track is None or track is UNKNOWN_ID:  # None: past the cache
                                unknown += 1
                                continue
                            kind = track.__class__
                        if kind is Tap:  # a campaign uses this ID: its stage sees the frame
                            see(track.view, msg)
                            track = track.entry
                            kind = track.__class__
                        if kind is not Track:
                            if kind is str:
                                skips.append(track)
                            else:  # an Unusable message: lost
                                decoder.lose(track.reason)
                            continue
                    data = msg.data
                    t = msg.timestamp
                    if not track.deferred or len(data) != track.length:
                        p._reserved += spent
                        spent = 0
                        if track.campaign_input is not None:  # the campaign stage reads it
                            see(track.campaign_input[4], msg)
                        if decoder.update(track, msg):  # the plain steps, inlined
                            track.sampler.seen = t
                            sampling = track  # counted: uncounted again if sampling raises
                            p._sample(track, t)
                            sampling = None
                        room, age_due = p._room - p._reserved, batcher.age_due
                        continue
                    sampler = track.sampler
                    sampler.seen = t  # the last-known state's time
                    if data == track.payload:
                        if t >= sampler.next_check:  # a heartbeat may be due
                            p._reserved += spent
                            spent = 0
                            p._sample_now(track, t, True)
                            room, age_due = p._room - p._reserved, batcher.age_due
                        repeated += 1
                        continue
                    direct = track.direct
                    raw = track.raw = direct(data[::-1]) if track.reverse else direct(data)
                    inline = track.campaign_input
                    if inline is not None:  # a campaign condition's one input: tested here
                        value = raw[inline[0]]  # (value >= boundary) xor inverted, vs its truth
                        if ((value >= inline[1]) is not inline[2]) is not inline[3].was_true:
                            flip(inline[4], t, value)
                    track.payload = bytes(data)
                    if t >= sampler.next_check:  # the first frame, or a heartbeat may be due
                        p._reserved += spent
                        spent = 0
                        p._sample_now(track, t, False)
                        room, age_due = p._room - p._reserved, batcher.age_due
                        decoded += 1
                        continue
                    select = sampler.select
                    selected = raw if select is None else select(raw)
                    if selected == sampler.last_raw:
                        decoded += 1
                        continue  # only bits of unselected signals changed
                    sampler.last_raw = selected
                    times = sampler.pending_times
                    if not times:
                        if track.generation != batcher.generation:
                            p._join(track)
                            room = p._room - p._reserved
                        pending.append(track)
                    times.append(t)
                    sampler.pending_rows.append(selected)
                    rows += 1
                    spent += bounds[track.message_index]
                    if spent >= room or t >= age_due:
                        p._reserved += spent
                        spent = 0
                        p._check(t)
                        room, age_due = p._room - p._reserved, batcher.age_due
                    decoded += 1
                break
            except Exception as exc:  # a fault of ours: this frame only
                p._reserved += spent
                spent = 0
                if sampling is not None:  # decoded (or repeated) and counted, not sampled
                    if sampling.repeated:
                        decoder.repeated -= 1
                    else:
                        decoder.decoded -= 1
                    sampling = None
                p._lose(msg, p._track_of(msg), exc)  # looked up again: no store per frame
                room, age_due = p._room - p._reserved, batcher.age_due
    finally:
        p._reserved += spent
        skipped.update(skips)
        if unknown:
            skipped[UNKNOWN_ID] += unknown
        decoder.frames += len(frames) - plain
        decoder.decoded += decoded
        decoder.repeated += repeated
        p.rows += rows

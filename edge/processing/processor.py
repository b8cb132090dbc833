"""The processing stage: decode -> sample -> batch -> encode, on one thread.

:class:`Processor` is usable on its own (benchmarks, tests): feed it frames with ``process``,
close the open batch with ``flush``; closed batches go to ``append`` (the spool's) as payload
builders that receive the stream id and sequence number the spool allocates.
"""

from __future__ import annotations

import logging
import operator
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import can
from cantools.database.can import Database

from edge.clock import Clock, SystemClock, WallClockWatch
from edge.config.model import Config
from edge.delivery.appender import PayloadAppender
from edge.errors import SpoolError
from edge.processing import fused
from edge.processing.batch import COLUMN_BOUND, TIME_BOUND, Batch, Batcher, value_bound
from edge.processing.database import load_databases
from edge.processing.decode import BusDecoder, Decoder, DecodeStats, InlineInput, Track
from edge.processing.latest import LatestFrame, latest_signals
from edge.processing.sample import Selection
from edge.vss.mapping import link_config, schema_with_vss
from edge.wire.codec import FORMAT_VERSION, KIND_DATA, KIND_SCHEMA, Codec
from edge.wire.schema import Schema, build_schema

__all__ = ["RAW_FRAME_BYTES", "PipelineStats", "Processor"]

log = logging.getLogger(__name__)

#: A SocketCAN frame as the kernel stores it (struct can_frame): the "raw" size we compare with.
RAW_FRAME_BYTES = 16


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """Counters since start (docs/counters.md says what each means)."""

    frames: int
    decode: DecodeStats
    samples: int
    rows: int
    batches: int
    schemas: int
    splits: int
    raw_bytes: int
    payload_bytes: int
    spool_errors: int = 0
    lost_rows: int = 0
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: counters per campaign (issue 11, edge/campaigns/engine.py), and ``history`` for the rings
    campaigns: dict[str, dict[str, int]] = field(default_factory=dict)
    spool: Any = None
    forwarder: Any = None


class CampaignStage(Protocol):
    """What runs beside the processor on its thread: the campaign engine
    (:class:`edge.campaigns.engine.CampaignEngine`). Declared here so that the processing stage
    imports nothing of the campaigns, which are built on it.

    The processor taps it into its own loop: it asks :meth:`view` once per new frame ID of a bus
    (:data:`edge.processing.decode.Tap`) and hands :meth:`frame` each data frame of the IDs it
    has a view of, as the loop meets them (frames of other IDs cost the stage nothing), holding
    :attr:`lock` over the chunk, then calls :meth:`chunk` with the chunk (which the stage may
    keep: its history). Where a condition reads one integer signal of a message the processing
    stage decodes anyway, the loop reads it from the track's raw values instead (:meth:`inline`)
    and calls :meth:`flip` only when the condition's test changes."""

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Held by the processor while its loop hands frames over (direct methods take it)."""

    def view(self, bus: str, arbitration_id: int, extended: bool) -> object:
        """What the stage keeps of frames with this ID (opaque), or None: it does not use them."""

    def frame(self, view: Any, msg: can.Message) -> None:
        """A data frame of an ID :meth:`view` gave ``view`` for; never raises."""

    def inline(self, view: object, track: Track) -> InlineInput | None:
        """The condition input of ``view`` the loop reads itself from ``track``'s raw values
        (then it calls :meth:`flip`, not :meth:`frame`), or None."""

    def flip(self, view: Any, t: float, physical: Any) -> None:
        """The value of an :meth:`inline` input, in a frame at ``t``, whose test differs from
        the condition's last truth; never raises."""

    def chunk(self, frames: Sequence[can.Message]) -> None:
        """After the processor's loop went through ``frames``."""

    def tick(self) -> None:
        """Time passed without frames (start and expiry go by the wall clock)."""

    def flush(self) -> None:
        """Send what is open (at stop)."""

    def latest_frames(self) -> list[LatestFrame]:
        """The latest frame of the messages only this stage decodes (the last-known state)."""

    def all_counters(self) -> dict[str, dict[str, int]]:
        """Counters by campaign, and ``history`` (PipelineStats.campaigns)."""


class CampaignFactory(Protocol):
    """Builds the campaign stage of a processor: the composition root (edge/pipeline.py) passes
    :class:`edge.campaigns.engine.CampaignEngine`."""

    def __call__(
        self,
        config: Config,
        databases: Sequence[tuple[str, Database, bool]],
        append: Callable[..., int],
        *,
        clock: Clock | None = ...,
        vss: Any = ...,
        latest: Callable[[], list[LatestFrame]] | None = ...,
    ) -> CampaignStage:
        """The stage for ``config``'s campaigns over the processor's databases."""
        ...


class Processor:
    """Decode, sample and batch frames; hand closed batches to ``emit`` as payload builders.

    The single-threaded heart of the pipeline, usable on its own (benchmarks, tests): feed it
    frames with :meth:`process`, close the open batch with :meth:`flush`.
    """

    def __init__(
        self,
        config: Config,
        append: Callable[[Callable[[str, int], Any]], int],
        *,
        clock: Clock | None = None,
        campaigns: CampaignFactory | None = None,
    ) -> None:
        """``campaigns`` builds the campaign engine when ``config`` has condition or periodic
        campaigns (``CampaignEngine``; ValueError when it is needed and not given)."""
        self.config = config
        self._append = append
        self._clock = clock or SystemClock()
        self._wall_clock = WallClockWatch(self._clock)  # ext "clock" (docs/format.md)
        databases = [
            (bus.name, load_databases(bus.databases, strict=bus.strict), bus.j1939)
            for bus in config.buses
        ]
        #: the VSS paths mapped signals feed (edge/vss/); raises ConfigError for a bad mapping
        self.vss = link_config(config, [db for _, db, _ in databases])
        selection = Selection(config.signals, self.vss)
        schema = build_schema(databases, selection.selects)
        self.schema: Schema = schema_with_vss(schema, self.vss)
        if not self.schema.messages:
            log.warning("no signal is selected: check signals.include / signals.exclude")
        # Campaigns (issue 11): condition/periodic campaigns see the frames of the IDs they use
        # (CampaignStage); ``append`` then takes ``priority=``. None without such campaigns.
        self.campaigns: CampaignStage | None = None
        if any(c.collect != "always" for c in config.campaigns):
            if campaigns is None:
                raise ValueError(
                    "the configuration has campaigns: build the processor with"
                    " campaigns=CampaignEngine (edge.campaigns.engine)"
                )
            self.campaigns = campaigns(
                config, databases, append, clock=self._clock, vss=self.vss, latest=self.latest
            )
        stage = self.campaigns
        tap, inline = (stage.view, stage.inline) if stage is not None else (None, None)
        self.bus_decoders = [
            BusDecoder(i, name, db, self.schema, selection, j1939=j1939, tap=tap, inline=inline)
            for i, (name, db, j1939) in enumerate(databases)
        ]
        self.decoder = Decoder(self.bus_decoders)
        # Values typed Any: the hot loop tells a Track from a skip reason by class, which
        # mypy does not narrow on (type() or isinstance() would cost a call per frame).
        self._tracks_by_bus: dict[str, tuple[dict[int, Any], dict[int, Any], BusDecoder]] = {
            b.name: (b.standard, b.extended, b) for b in self.bus_decoders
        }
        self._pending: list[Track] = []  # tracks with pending rows (see _run)
        # Estimate bounds per message (by schema index), tighter than the batcher's general
        # ones: each value's bound from its signal's size, each pending row reserving them all.
        self._value_bounds: list[list[int]] = []
        for index, info in enumerate(self.schema.messages):
            message = self.bus_decoders[info.bus].messages_by_index[index]
            self._value_bounds.append(
                [
                    value_bound(message.get_signal_by_name(s.name).length, s.is_float)
                    for s in info.signals
                ]
            )
        self._row_bounds = [TIME_BOUND + sum(b) for b in self._value_bounds]
        self._reserved = 0  # estimate reserved by pending rows
        batch = config.batch
        self.codec = Codec(
            batch.compression, batch.compression_level, batch.time_resolution, config.vehicle_id
        )
        self._appender = PayloadAppender(append, self.codec)
        self._ticks = self.codec.ticks_per_second
        self.batcher = Batcher(
            budget=batch.max_bytes,
            max_age=batch.max_age,
            ticks_per_second=self._ticks,
            measure=self._measure,
            clock=self._clock,
        )
        self.samples = 0
        self.rows = 0
        self.batches = 0
        self.schemas = 0
        self.splits = 0
        self.payload_bytes = 0
        self.last_time = 0.0  # timestamp of the newest frame processed
        self._schema_sent_at = -float("inf")
        self.spool_errors = 0
        self.lost_rows = 0  # rows that could not be encoded (a fault of ours)
        self._spool_error_logged = -float("inf")
        self._lock = threading.Lock()
        self._slack = batch.max_bytes / 32
        self._room = 0.0
        self._rearm()

    def filters(self, bus: str) -> list[dict[str, Any]]:
        """python-can ``can_filters`` that let through only the selected messages of ``bus``."""
        decoder = self.decoder.bus(bus)
        return [
            {"can_id": can_id, "can_mask": mask, "extended": extended}
            for can_id, mask, extended in decoder.frame_ids()
        ]

    def process(self, frames: Sequence[can.Message]) -> None:
        """Decode, sample and batch ``frames`` (closing batches as they fill or age)."""
        with self._lock:
            if self._clock.monotonic() - self._schema_sent_at >= self.config.batch.schema_interval:
                try:
                    self._send_schema()
                except Exception:  # a fault of ours: the frames are still processed
                    log.exception("the schema payload could not be made; retried next chunk")
            campaigns = self.campaigns
            if campaigns is None:
                self._run(frames)
            else:  # issue 11: the loop hands the campaign stage the frames it taps
                with campaigns.lock:
                    self._run(frames)
                    campaigns.chunk(frames)
            if frames:
                self.last_time = frames[-1].timestamp

    def _run(self, frames: Sequence[can.Message]) -> None:
        """Decode, sample and batch ``frames`` on the fused path (:mod:`edge.processing.fused`)."""
        fused.run(self, frames)

    def _track_of(self, msg: can.Message) -> Track | None:
        """The fast path's track of a data frame's message, if it has one by now."""
        entry = self._tracks_by_bus.get(msg.channel)  # type: ignore[arg-type]
        if entry is None or msg.is_error_frame or msg.is_remote_frame:
            return None
        track = entry[2].entry(msg.arbitration_id, msg.is_extended_id)
        return track if isinstance(track, Track) else None

    def _lose(self, msg: can.Message, track: Track | None, exc: Exception) -> None:
        """A frame whose handling raised: count it lost and, when it has a track on the fast
        path, settle what is pending and switch the message to cantools' own path for good."""
        decoder = self.decoder
        decoder.lose(type(exc).__name__)
        name = "?"
        if isinstance(track, Track):
            bus = self.decoder.bus(str(msg.channel))
            name = bus.message_name(track)
            if track.unpack is not None or track.deferred:
                try:
                    self._settle_all()
                except Exception as settle_error:  # pending rows of this track are gone too
                    track.sampler.pending_rows.clear()
                    track.sampler.pending_times.clear()
                    self._pending.clear()
                    log.error("settling after a fault failed: %r", settle_error)
                bus.fall_back(track)
                log.error(
                    "message %s: processing a frame failed (%r); that frame is lost and "
                    "counted, cantools decodes this message from now on",
                    name,
                    exc,
                    exc_info=exc,
                )
                return
        if decoder.lost_reasons[type(exc).__name__] == 1:  # first of its kind: the traceback
            log.error("message %s: processing a frame failed; lost and counted", name, exc_info=exc)
        else:
            log.debug("message %s: processing a frame failed: %r", name, exc)

    def _process_one(self, msg: can.Message) -> None:
        """Decode, sample and batch one frame, in plain steps (what :meth:`_run` inlines)."""
        track = self.decoder.decode(msg)
        if track is not None:
            track.sampler.seen = msg.timestamp
            try:
                self._sample(track, msg.timestamp)
            except Exception:
                if track.repeated:
                    self.decoder.repeated -= 1
                else:
                    self.decoder.decoded -= 1
                raise

    def _sample(self, track: Track, t: float) -> None:
        """Sample the frame ``track`` was just updated with (the decoder's way)."""
        if track.unpack is not None:
            self._sample_now(track, t, track.repeated)
            return
        items = track.sampler.sample(t, track.values, track.repeated)
        if items:
            self._add(track, t, items)

    def _sample_now(self, track: Track, t: float, repeated: bool) -> None:
        """Sample the frame ``track`` just decoded (as a tuple) now, after its pending rows."""
        if track.sampler.pending_rows:
            self._settle(track)
        items = track.sampler.sample_raw(t, track.raw, repeated)
        if items:
            self._add(track, t, items)

    def _add(self, track: Track, t: float, items: list[tuple[int, Any]]) -> None:
        """Add a row of samples to the track's group in the open batch."""
        self.samples += len(items)
        self.rows += 1
        tick = round(t * self._ticks)
        batcher = self.batcher
        if track.generation != batcher.generation:
            track.group = batcher.group(track.message_index, track.source_address)
            track.generation = batcher.generation
        batch = batcher.batch
        batch.counted(tick, track.group.add(tick, items))
        # Batcher.check only when it may answer yes: a measurement due, or the batch may be old
        # enough (age_due is a lower bound it keeps; -inf until the batch's first check).
        if (batch.estimate >= batcher.next_measure or t >= batcher.age_due) and batcher.check(tick):
            self._close()
        else:
            self._room = batcher.next_measure + self._slack - batch.estimate

    def _join(self, track: Track) -> None:
        """Give ``track`` its group in the open batch (the header of every column it may fill
        goes into the estimate now)."""
        track.group = self.batcher.group(track.message_index, track.source_address)
        track.generation = self.batcher.generation
        self.batcher.batch.estimate += COLUMN_BOUND * track.width
        self._rearm()

    def _settle(self, track: Track) -> None:
        """Sample the pending rows of ``track`` into its group of the open batch."""
        sampler = track.sampler
        count = len(sampler.pending_rows)
        sent, low, high = sampler.settle(track.group, self._ticks)
        kept = count - sampler.repeats  # rows that repeated theirs but for NaN: not rows
        self.rows -= sampler.repeats
        bounds = self._value_bounds[track.message_index]
        values = sum(sent)
        value_bytes = sum(map(operator.mul, sent, bounds))
        if kept:
            self.batcher.batch.counted_rows(kept, values, value_bytes, low, high)
        self.samples += values
        self._reserved -= count * self._row_bounds[track.message_index]
        self._rearm()

    def _settle_all(self) -> None:
        for track in self._pending:
            if track.sampler.pending_rows:
                self._settle(track)
        self._pending.clear()

    def _check(self, t: float) -> None:
        """Reservations reached ``_room``, or the batch may be old enough: settle if the estimate
        may have reached the next measurement, then let the batcher decide (close or not)."""
        if self._reserved >= self._room:
            self._settle_all()
        if self.batcher.check(round(t * self._ticks)):
            self._close()
        else:
            self._rearm()

    def _rearm(self) -> None:
        """Room left for reservations before the next :meth:`_check` must settle: up to the next
        measurement, plus a slack that lets reservations run ahead (a measurement may then come
        at most ``slack`` estimate bytes late: well within the 5 % a batch keeps free)."""
        batcher = self.batcher
        self._room = batcher.next_measure + self._slack - batcher.batch.estimate

    def _measure(self, batch: Batch) -> int:
        self._settle_all()
        try:
            return self.codec.measure(batch, self.schema)
        except Exception:  # closed at once; _write then isolates the rows that cause it
            return self.config.batch.max_bytes

    def tick(self) -> None:
        """Periodic housekeeping from the processing loop: close a batch a silent bus left open,
        resend the schema when its interval is over."""
        with self._lock:
            if self.batcher.expired():
                self._close()
            if self.campaigns is not None:  # issue 11: start/expiry without frames
                self.campaigns.tick()
            if self._clock.monotonic() - self._schema_sent_at >= self.config.batch.schema_interval:
                self._send_schema()

    def flush(self) -> None:
        """Close the open batch now (shutdown, the ``flush`` direct method)."""
        with self._lock:
            self._close()

    def _send_schema(self) -> None:
        codec, schema = self.codec, self.schema
        envelope = codec.envelope(None, schema)
        envelope.setdefault("ext", {})["clock"] = self._wall_clock.schema_ext()
        body = codec.schema_body(schema)
        if self._spool(KIND_SCHEMA, envelope, body):
            self.schemas += 1
            self._schema_sent_at = self._clock.monotonic()

    def _spool(self, kind: int, envelope: dict[str, Any], body: bytes) -> bool:
        """Append one payload to the spool, which numbers it. A spool that refuses it (disk
        full, I/O error) costs this payload only: it is counted and logged, and processing goes
        on. A new stream (the spool file was replaced) gets the schema again at once."""
        try:
            size, new_stream = self._appender.append(kind, envelope, body)
        except SpoolError as exc:
            self.spool_errors += 1
            now = self._clock.monotonic()
            if now - self._spool_error_logged >= 60:
                self._spool_error_logged = now
                log.error("spool refused a payload (%d so far): %s", self.spool_errors, exc)
            return False
        self.payload_bytes += size
        if new_stream and kind == KIND_DATA:
            self._send_schema()
        return True

    def _close(self) -> None:
        self._settle_all()
        batch = self.batcher.take()
        self._rearm()
        if batch is not None:
            self._write(batch)

    def _write(self, batch: Batch) -> None:
        codec, schema = self.codec, self.schema
        try:
            envelope = codec.envelope(batch, schema)
            clock = self._wall_clock.data_ext()
            if clock is not None:  # the wall clock may be wrong: say how to place the payload
                envelope.setdefault("ext", {})["clock"] = clock
            body = codec.data_body(batch, schema)
            if codec.body_version != FORMAT_VERSION:  # integers beyond 64 bits
                envelope["version"] = codec.body_version
            size = codec.size(KIND_DATA, envelope, body)
        except Exception as exc:  # a fault of ours: isolate the rows that cause it
            self._unencodable(batch, exc)
            return
        if size > self.config.batch.max_bytes and batch.rows > 1:
            self.splits += 1
            for half in batch.split():
                self._write(half)
            return
        if self._spool(KIND_DATA, envelope, body):
            self.batches += 1
            self._wall_clock.spooled(envelope.get("ext", {}).get("clock"))

    def _unencodable(self, batch: Batch, exc: Exception) -> None:
        """Encoding ``batch`` raised: encode its halves apart, down to single rows, so that only
        the rows that cannot be encoded are lost (counted in ``lost_rows``)."""
        if batch.rows > 1:
            for half in batch.split():
                self._write(half)
            return
        self.lost_rows += batch.rows
        log.error("a row could not be encoded (%d lost so far): %r", self.lost_rows, exc)

    def latest(self) -> list[LatestFrame]:
        """The latest decoded frame of every message (and J1939 source address): what the
        last-known state is decoded from; with the campaign engine's, for the messages only
        campaigns use."""
        frames: list[LatestFrame] = []
        with self._lock:
            for bus in self.bus_decoders:
                for track in bus.tracks():
                    if track.payload is None:
                        continue
                    message = bus.messages_by_index[track.message_index]
                    seen = track.sampler.seen
                    payload = bytes(track.payload)
                    frames.append(
                        LatestFrame(bus.name, message, payload, seen, track.source_address)
                    )
        if self.campaigns is not None:
            frames += self.campaigns.latest_frames()
        return frames

    def signals(self, globs: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Latest value and time of every decoded signal matching ``globs`` (``Message.Signal``
        or a mapped VSS path): the ``getSignals`` method, with or without campaigns."""
        return latest_signals(self.latest(), globs, self.vss)

    def stats(self) -> PipelineStats:
        """A snapshot of the counters."""
        decode = self.decoder.stats()
        return PipelineStats(
            frames=decode.frames,
            decode=decode,
            samples=self.samples,
            rows=self.rows,
            batches=self.batches,
            schemas=self.schemas,
            splits=self.splits,
            raw_bytes=decode.frames * RAW_FRAME_BYTES,
            payload_bytes=self.payload_bytes,
            spool_errors=self.spool_errors,
            lost_rows=self.lost_rows,
            campaigns=self.campaigns.all_counters() if self.campaigns is not None else {},
        )

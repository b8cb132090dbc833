"""The processing stage: decode -> sample -> batch -> encode, on one thread.

:class:`Processor` is usable on its own (benchmarks, tests): feed it frames with ``process``,
close the open batch with ``flush``; closed batches go to ``append`` (the spool's) as payload
builders that receive the stream id and sequence number the spool allocates.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import can

from edge.batch import Batch, Batcher
from edge.clock import Clock, SystemClock
from edge.codec import KIND_DATA, KIND_SCHEMA, Codec
from edge.config import Config
from edge.database import load_databases
from edge.decode import BusDecoder, Decoder, DecodeStats
from edge.payload import Payload
from edge.sample import Selection
from edge.schema import Schema, build_schema

__all__ = ["RAW_FRAME_BYTES", "PipelineStats", "Processor"]

log = logging.getLogger(__name__)

#: A SocketCAN frame as the kernel stores it (struct can_frame): the "raw" size we compare with.
RAW_FRAME_BYTES = 16


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """Counters since start (see docs/operations.md for what each means)."""

    frames: int
    decode: DecodeStats
    samples: int
    rows: int
    batches: int
    schemas: int
    splits: int
    raw_bytes: int
    payload_bytes: int
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    spool: Any = None
    forwarder: Any = None


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
    ) -> None:
        self.config = config
        self._append = append
        self._clock = clock or SystemClock()
        selection = Selection(config.signals)
        databases = [
            (bus.name, load_databases(bus.databases, strict=bus.strict), bus.j1939)
            for bus in config.buses
        ]
        self.schema: Schema = build_schema(databases, selection.selects)
        if not self.schema.messages:
            log.warning("no signal is selected: check signals.include / signals.exclude")
        self.bus_decoders = [
            BusDecoder(i, name, db, self.schema, selection, j1939=j1939)
            for i, (name, db, j1939) in enumerate(databases)
        ]
        self.decoder = Decoder(self.bus_decoders)
        batch = config.batch
        self.codec = Codec(
            batch.compression, batch.compression_level, batch.time_resolution, config.vehicle_id
        )
        self._ticks = self.codec.ticks_per_second
        self.batcher = Batcher(
            budget=batch.max_bytes,
            max_age=batch.max_age,
            ticks_per_second=self._ticks,
            measure=lambda b: self.codec.measure(b, self.schema),
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
        self._lock = threading.Lock()

    def filters(self, bus: str) -> list[dict[str, Any]]:
        """python-can ``can_filters`` that let through only the selected messages of ``bus``."""
        decoder = self.decoder.bus(bus)
        return [
            {"can_id": can_id, "can_mask": mask, "extended": extended}
            for can_id, mask, extended in decoder.frame_ids()
        ]

    def process(self, frames: Sequence[can.Message]) -> None:
        """Decode, sample and batch ``frames`` (closing batches as they fill or age)."""
        decode = self.decoder.decode
        batcher = self.batcher
        ticks = self._ticks
        with self._lock:
            if self._clock.monotonic() - self._schema_sent_at >= self.config.batch.schema_interval:
                self._send_schema()
            for msg in frames:
                track = decode(msg)
                if track is None:
                    continue
                t = msg.timestamp
                items = track.sampler.sample(t, track.values, track.repeated)
                if items:
                    self.samples += len(items)
                    self.rows += 1
                    if batcher.add(
                        track.message_index, track.source_address, round(t * ticks), items
                    ):
                        self._close()
            if frames:
                self.last_time = frames[-1].timestamp

    def tick(self) -> None:
        """Periodic housekeeping from the processing loop: close a batch a silent bus left open,
        resend the schema when its interval is over."""
        with self._lock:
            if self.batcher.expired():
                self._close()
            if self._clock.monotonic() - self._schema_sent_at >= self.config.batch.schema_interval:
                self._send_schema()

    def flush(self) -> None:
        """Close the open batch now (shutdown, the ``flush`` direct method)."""
        with self._lock:
            self._close()

    def _send_schema(self) -> None:
        codec, schema = self.codec, self.schema
        envelope = codec.envelope(None, schema)
        body = codec.schema_body(schema)
        self._append(self._builder(KIND_SCHEMA, envelope, body))
        self.schemas += 1
        self._schema_sent_at = self._clock.monotonic()

    def _builder(self, kind: int, envelope: dict[str, Any], body: bytes) -> Any:
        """The payload builder the spool calls with the stream id and sequence it allocates."""

        def build(stream: str, seq: int) -> Payload:
            payload = self.codec.payload(kind, envelope, body, stream, seq)
            self.payload_bytes += len(payload.body)
            return payload

        return build

    def _close(self) -> None:
        batch = self.batcher.take()
        if batch is not None:
            self._write(batch)

    def _write(self, batch: Batch) -> None:
        codec, schema = self.codec, self.schema
        envelope = codec.envelope(batch, schema)
        body = codec.data_body(batch, schema)
        size = codec.size(KIND_DATA, envelope, body)
        if size > self.config.batch.max_bytes and batch.rows > 1:
            self.splits += 1
            for half in batch.split():
                self._write(half)
            return
        self._append(self._builder(KIND_DATA, envelope, body))
        self.batches += 1

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
        )

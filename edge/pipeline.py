"""The composition root: wires source -> decode -> sample -> batch -> spool -> forwarder -> uplink
from a :class:`~edge.config.model.Config`, and runs the processing loop.

Threads: one per source (reading), one processing thread (decode, sample, batch, encode, spool
append), one forwarder (spool -> uplink). They meet at two points only: the bounded frame queue,
and the spool on disk.

The *front* (sources, queue, processor) and the *back end* (spool, forwarder, uplink:
:class:`~edge.delivery.backend.Backend`) have different lives: on IoT Edge a new configuration
from the module twin replaces the front while the back end keeps sending. A Pipeline opens its
own back end by default (and closes it at ``stop``), or takes a running one handed in, which it
then leaves running at ``stop``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from edge.campaigns.engine import CampaignEngine
from edge.clock import Clock, SystemClock
from edge.config.campaigns import DEFAULT_PRIORITY
from edge.config.model import Config
from edge.delivery.backend import Backend, BackendSettings
from edge.delivery.forwarder import Forwarder
from edge.delivery.spool import Spool
from edge.delivery.uplinks.base import Uplink
from edge.ingest.source import (
    CHUNK,
    TIME_STEP_BACK,
    BusSource,
    FrameQueue,
    FrameSource,
    ReplaySource,
)
from edge.metrics import LossWatch, ProgressWatch, QueueLevel
from edge.processing.processor import PipelineStats, Processor

__all__ = ["Pipeline", "restart_after_step_back", "source_name"]

log = logging.getLogger(__name__)

#: /healthz fails for this long after a frame was last lost to a processing fault.
LOSS_WINDOW = 60.0


def restart_after_step_back(processor: Processor) -> None:
    """Frame time stepped back (sources cut chunks there: see
    :class:`~edge.ingest.source.TimeGuard`):
    close the open batch, whose age would otherwise wait for the clock to catch up, and restart
    every sampler's rate limits and heartbeats from the step (issue 12, item 5)."""
    processor.flush()
    for bus in processor.bus_decoders:
        for track in bus.tracks():
            track.sampler.restart_timers()


def source_name(source: FrameSource) -> str:
    """The name a source's counters appear under: its bus, or ``replay``."""
    if isinstance(source, BusSource):
        return source.config.name
    if isinstance(source, ReplaySource):
        return "replay"
    return type(source).__name__


class Pipeline:
    """The whole module: sources, processor, and the back end (spool, forwarder, uplink).
    ``start``, then ``stop``.

    A running ``backend`` may be handed in so that it outlives this pipeline: ``start`` then does
    not start its forwarder and ``stop`` leaves it running for the next pipeline. Otherwise the
    pipeline opens one (the last thing it builds, so that nothing is left open when building
    the front fails) and closes it at ``stop``.
    """

    def __init__(
        self,
        config: Config,
        *,
        sources: Sequence[FrameSource] | None = None,
        clock: Clock | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._loss = LossWatch(LOSS_WINDOW, self._clock.monotonic)
        self._owns_backend = backend is None
        self._priority = next(
            (c.priority for c in config.campaigns if c.collect == "always"), DEFAULT_PRIORITY
        )
        self.processor = Processor(
            config, self._append, clock=self._clock, campaigns=CampaignEngine
        )
        #: Diagnostic requests (edge/diagnostics/), on live buses that enable them; None when
        #: every bus is listen-only. Imported only then (can-isotp, udsoncan).
        self.diagnostics: Any = None
        if config.diagnostics.buses and config.replay is None:
            from edge.diagnostics.service import Diagnostics, DiagnosticsWriter

            processor = self.processor
            self.diagnostics_writer = DiagnosticsWriter(
                processor.codec, lambda: processor.schema.schema_id, self._append
            )
            self.diagnostics = Diagnostics(config, self.diagnostics_writer.write, clock=self._clock)
        self.sources = list(sources) if sources is not None else self._default_sources()
        self.queue = FrameQueue(config.queue_frames)
        if backend is None:
            backend = Backend.open(BackendSettings.of(config), clock=self._clock)
        self.backend = backend
        self.spool: Spool = backend.spool
        self.uplink: Uplink = backend.uplink
        self.forwarder: Forwarder = backend.forwarder
        #: thread name -> the exception that ended it (for liveness checks)
        self.failures: dict[str, str] = {}
        #: chunks whose processing raised (logged; the stream went on)
        self.processing_errors = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._processing: threading.Thread | None = None
        self._final_stats: PipelineStats | None = None

    def _default_sources(self) -> list[FrameSource]:
        config = self.config
        if config.replay is not None:
            return [ReplaySource(config.replay, [b.name for b in config.buses])]
        return [
            BusSource(bus, self.processor.filters(bus.name) if bus.kernel_filters else None)
            for bus in config.buses
        ]

    def _append(self, build: Callable[[str, int], Any], priority: int | None = None) -> int:
        # issue 11: campaign payloads carry their priority; the rest is the always campaign's.
        seq = self.spool.append(build, priority=self._priority if priority is None else priority)
        self.forwarder.wake()
        return seq

    def start(self) -> None:
        """Start the forwarder (unless handed in), the processing thread and every source."""
        if self._owns_backend:
            self.backend.start()
        self._processing = self._thread("process", self._process_loop)
        for source in self.sources:
            self._threads.append(
                self._thread(f"source-{source_name(source)}", source.run, self.queue, self._stop)
            )
        if self.diagnostics is not None:
            self.diagnostics.start()

    def _thread(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)
            except Exception as exc:  # recorded for liveness instead of dying silently
                log.exception("thread %s died", name)
                self.failures[name] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def sources_finished(self) -> bool:
        """Whether every source has ended by itself (a replay reached its end)."""
        return bool(self._threads) and not any(t.is_alive() for t in self._threads)

    def processing_alive(self) -> bool:
        """Whether the processing thread runs."""
        return self._processing is not None and self._processing.is_alive()

    def wait(self, stop: threading.Event | None = None, poll: float = 0.2) -> None:
        """Block until ``stop`` is set or every source has finished."""
        while not (stop is not None and stop.is_set()) and not self.sources_finished():
            time.sleep(poll)

    def _process_loop(self) -> None:
        processor, queue = self.processor, self.queue
        while True:
            try:
                chunk = queue.get(timeout=0.1)
                if chunk is not None:
                    if chunk and chunk[0].timestamp < processor.last_time - TIME_STEP_BACK:
                        restart_after_step_back(processor)
                    processor.process(chunk)
                elif self._stop.is_set():
                    return
                elif self.sources_finished():  # a replay ended: send its last batch now
                    processor.flush()
                    return
                else:
                    processor.tick()
            except Exception:  # a bug must cost one chunk, not the whole stream
                self.processing_errors += 1
                log.exception("processing failed (%d so far); going on", self.processing_errors)

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop reading, process what was read and close the open batch into the spool. When
        this pipeline owns its back end, also stop the forwarder (after up to ``drain_timeout``
        seconds of sending what is spooled) and close uplink and spool."""
        if self.diagnostics is not None:
            self.diagnostics.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._processing is not None:
            self._processing.join(timeout=30)
        while (chunk := self.queue.get(timeout=0)) is not None:
            self.processor.process(chunk)
        self.processor.flush()
        if self.processor.campaigns is not None:  # open captures go out with what they hold
            self.processor.campaigns.flush()
        if self._owns_backend:
            self.backend.close(drain_timeout)
        self._final_stats = self.stats()

    def stats(self) -> PipelineStats:
        """Counters of every stage, sources by bus name (after ``stop``: as they were then)."""
        if self._final_stats is not None:
            return self._final_stats
        return replace(
            self.processor.stats(),
            sources={source_name(s): s.stats() for s in self.sources},
            spool=self.backend.spool_stats(),
            forwarder=self.backend.forwarder_stats(),
        )

    def problems(self, watch: ProgressWatch) -> list[str]:
        """What is wrong with the threads, for liveness."""
        found = [f"thread {name} died: {error}" for name, error in sorted(self.failures.items())]
        if self._stop.is_set():
            return found
        if (
            not self.processing_alive()
            and not self.sources_finished()
            and "process" not in self.failures
        ):
            found.append("processing thread ended while sources run")
        stalled = watch.check(self.processor.decoder.frames, self.queue.qsize())
        if stalled:
            found.append(stalled)
        losing = self._loss.check(self.processor.decoder.lost + self.processor.lost_rows)
        if losing:
            found.append(losing)
        return found

    def queue_level(self) -> QueueLevel:
        """Chunks waiting and the queue's capacity."""
        return QueueLevel(self.queue.qsize(), max(1, self.config.queue_frames // CHUNK))

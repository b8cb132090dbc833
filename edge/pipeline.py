"""The composition root: wires source -> decode -> sample -> batch -> spool -> forwarder -> uplink
from a :class:`~edge.config.Config`, and runs the processing loop.

Threads: one per source (reading), one processing thread (decode, sample, batch, encode, spool
append), one forwarder (spool -> uplink). They meet at two points only: the bounded frame queue,
and the spool on disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge.clock import Clock, SystemClock
from edge.config import Config
from edge.forwarder import Forwarder
from edge.process import PipelineStats, Processor
from edge.source import BusSource, FrameQueue, FrameSource, ReplaySource
from edge.spool import Spool
from edge.uplinks import uplink_class
from edge.uplinks.base import Uplink

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


class Pipeline:
    """The whole module: sources, processor, spool, forwarder. ``start``, then ``stop``."""

    def __init__(
        self,
        config: Config,
        *,
        uplink: Uplink | None = None,
        sources: Sequence[FrameSource] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        Path(config.spool.path).parent.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(
            config.spool.path,
            max_bytes=config.spool.max_bytes,
            ttl=config.spool.ttl,
            clock=self._clock,
        )
        self.processor = Processor(config, self._append, clock=self._clock)
        if uplink is None:
            cls = uplink_class(config.uplink.kind)
            uplink = cls.from_options(config.uplink.options)
        self.uplink: Uplink = uplink
        fwd = config.forwarder
        self.forwarder = Forwarder(
            self.spool,
            self.uplink,
            send_timeout=fwd.send_timeout,
            backoff_initial=fwd.backoff_initial,
            backoff_max=fwd.backoff_max,
            clock=self._clock,
        )
        self.sources = list(sources) if sources is not None else self._default_sources()
        self.queue = FrameQueue(config.queue_frames)
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

    def _append(self, build: Callable[[str, int], Any]) -> int:
        seq = self.spool.append(build)
        self.forwarder.wake()
        return seq

    def start(self) -> None:
        """Start the forwarder, the processing thread and every source."""
        self.forwarder.start()
        self._processing = threading.Thread(target=self._process_loop, name="process", daemon=True)
        self._processing.start()
        for i, source in enumerate(self.sources):
            thread = threading.Thread(
                target=source.run, args=(self.queue, self._stop), name=f"source-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def sources_finished(self) -> bool:
        """Whether every source has ended by itself (a replay reached its end)."""
        return bool(self._threads) and not any(t.is_alive() for t in self._threads)

    def wait(self, stop: threading.Event | None = None, poll: float = 0.2) -> None:
        """Block until ``stop`` is set or every source has finished."""
        while not (stop is not None and stop.is_set()) and not self.sources_finished():
            time.sleep(poll)

    def _process_loop(self) -> None:
        processor, queue = self.processor, self.queue
        while True:
            chunk = queue.get(timeout=0.1)
            if chunk is not None:
                processor.process(chunk)
            elif self._stop.is_set() or self.sources_finished():
                return
            else:
                processor.tick()

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop reading, process what was read, close the open batch into the spool, and stop
        the forwarder (after up to ``drain_timeout`` seconds of sending what is spooled)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._processing is not None:
            self._processing.join(timeout=30)
        while (chunk := self.queue.get(timeout=0)) is not None:
            self.processor.process(chunk)
        self.processor.flush()
        if drain_timeout > 0:
            self.forwarder.drain(drain_timeout)
        self.forwarder.stop(timeout=10)
        self.uplink.close()
        self._final_stats = self.stats()
        self.spool.close()

    def stats(self) -> PipelineStats:
        """Counters of every stage (after ``stop``: as they were when it stopped)."""
        if self._final_stats is not None:
            return self._final_stats
        base = self.processor.stats()
        return PipelineStats(
            **{
                name: getattr(base, name)
                for name in PipelineStats.__dataclass_fields__
                if name not in ("sources", "spool", "forwarder")
            },
            sources={f"source-{i}": s.stats() for i, s in enumerate(self.sources)},
            spool=self.spool.stats(),
            forwarder=self.forwarder.stats(),
        )

"""What the module says about itself: its counters since it started, the summary of them (the
reported property ``stats`` and the ``getStats`` method), and its state (the reported
``state`` and ``stateReason``).

Counters survive reconfigurations. A new configuration replaces the front of the pipeline
(sources, processing), and sometimes the back end (spool, forwarder, uplink); the counters of
what was replaced are carried (:class:`ModuleCounters`) and added to the running ones, so
metrics stay monotonic. Integers and per-reason counts add up, per-bus and per-campaign counters
by name; a bus no longer configured keeps its counts but not its ``connected`` flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any, TypeVar

from edge.delivery.forwarder import ForwarderStats
from edge.delivery.spool import SpoolStats
from edge.iotedge.twin import iso_time
from edge.processing.processor import PipelineStats

__all__ = ["ModuleCounters", "module_state", "summary"]


class ModuleCounters:
    """The counters of retired fronts and back ends, to add to the running ones. Not
    thread-safe: the module guards it with the lock of its own swaps."""

    def __init__(self) -> None:
        self._front: PipelineStats | None = None
        self._forwarder: ForwarderStats | None = None

    def carry_front(self, counters: PipelineStats) -> None:
        """A front (sources and processing stage) retires with ``counters``."""
        self._front = _add_counters(self._front, counters)

    def carry_forwarder(self, stats: ForwarderStats) -> None:
        """A back end's forwarder retires with ``stats`` (the spool keeps its own counters in
        its file)."""
        self._forwarder = _add_forwarder(self._forwarder, stats)

    def total(
        self, front: PipelineStats, spool: SpoolStats, forwarder: ForwarderStats
    ) -> PipelineStats:
        """Every counter since the module started: the carried ones plus the running front's,
        spool's and forwarder's."""
        return replace(
            _add_counters(self._front, front),
            spool=spool,
            forwarder=_add_forwarder(self._forwarder, forwarder),
        )


def module_state(
    *,
    stopping: bool,
    configured: bool,
    problems: Sequence[str],
    stats: PipelineStats | None,
    metrics_error: str | None,
) -> tuple[str, str | None]:
    """``state`` and ``stateReason``: ``stopping``; ``unconfigured`` before any configuration;
    ``degraded`` with the reasons (liveness ``problems``, a bus that cannot be opened, metrics
    that cannot be served); else ``running``."""
    if stopping:
        return "stopping", None
    if not configured:
        return "unconfigured", "no configuration yet: set the desired property 'config'"
    found = list(problems)
    if stats is not None:
        for bus, source in sorted(stats.sources.items()):
            if source.get("connected") is False and source.get("errors", 0) > 0:
                found.append(f"bus {bus} is not open")
    if metrics_error:
        found.append(metrics_error)
    if found:
        return "degraded", "; ".join(found)
    return "running", None


def summary(stats: PipelineStats | None, now: float, diagnostics: Any = None) -> dict[str, Any]:
    """The counters as JSON (reported ``stats`` and ``getStats``) at wall-clock time ``now``;
    ``diagnostics``: the running :class:`edge.diagnostics.service.Diagnostics`, if any."""
    if stats is None:
        return {"at": iso_time(now)}
    spool, forwarder = stats.spool, stats.forwarder
    buses = []
    for name, source in sorted(stats.sources.items()):
        entry = {"bus": name, "frames": int(source.get("frames", 0))}
        if "connected" in source:
            entry["connected"] = bool(source["connected"])
            entry["errors"] = int(source.get("errors", 0))
        buses.append(entry)
    return {
        "at": iso_time(now),
        "frames": stats.frames,
        "buses": buses,
        "decodedFrames": stats.decode.decoded,
        "repeatedFrames": stats.decode.repeated,
        "decodeSkipped": dict(sorted(stats.decode.skipped.items())),
        "lostFrames": stats.decode.lost,
        "lostReasons": dict(sorted(stats.decode.lost_reasons.items())),
        "lostRows": stats.lost_rows,
        "samples": stats.samples,
        "batches": stats.batches,
        "schemaPayloads": stats.schemas,
        "rawBytes": stats.raw_bytes,
        "payloadBytes": stats.payload_bytes,
        "sent": forwarder.sent,
        "retries": forwarder.retries,
        "uplinkErrors": {
            "transient": forwarder.transient_errors,
            "permanent": forwarder.permanent_errors,
        },
        "lastError": forwarder.last_error,
        "lastSendTime": (
            iso_time(forwarder.last_success_time) if forwarder.last_success_time else None
        ),
        "spoolDepth": spool.depth,
        "spoolBytes": spool.bytes,
        "droppedBatches": spool.dropped_full + spool.dropped_ttl,
        "spoolDropped": {"full": spool.dropped_full, "ttl": spool.dropped_ttl},
        "spoolErrors": stats.spool_errors,
        "spoolCorrupt": {
            "recovered": spool.recovered_corrupt,
            "kept": spool.corrupt_files,
            "deleted": spool.corrupt_deleted,
        },
        "deadLetters": spool.dead_letters,
        **({} if diagnostics is None else {"diagnostics": diagnostics.stats()}),
        **_campaigns_summary(stats),
    }


def _campaigns_summary(stats: PipelineStats) -> dict[str, Any]:
    """Per-campaign counters (issue 11), when campaigns run: summed over reconfigurations, so a
    campaign's counters go on."""
    if not stats.campaigns:
        return {}
    counters = dict(stats.campaigns)
    return {"campaignHistory": counters.pop("history", {}), "campaigns": counters}


# -- sums ---------------------------------------------------------------------------------------


def _add_sources(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    merged = {name: dict(values) for name, values in a.items()}
    for name, values in b.items():
        entry = merged.setdefault(name, {})
        for key, value in values.items():
            if isinstance(value, bool):
                entry[key] = value
            else:
                entry[key] = entry.get(key, 0) + value
    for name in set(a) - set(b):  # a bus no longer configured is not "connected"
        merged[name].pop("connected", None)
        merged[name].pop("link_up", None)
    return merged


_Counters = TypeVar("_Counters")


def _add_counters(a: PipelineStats | None, b: PipelineStats) -> PipelineStats:
    """Counters of ``a`` (retired stages) plus ``b`` (the running one)."""
    return b if a is None else _summed(a, b)


def _summed(a: _Counters, b: _Counters) -> _Counters:
    """Field by field: integers and per-reason counts add up, nested counters recursively,
    sources by bus name; anything else is ``b``'s."""
    values: dict[str, Any] = {}
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("sources", "campaigns"):  # counters by bus, by campaign
            values[f.name] = _add_sources(x, y)
        elif is_dataclass(x) and is_dataclass(y):
            values[f.name] = _summed(x, y)
        elif type(x) is int and type(y) is int:
            values[f.name] = x + y
        elif isinstance(x, Mapping) and isinstance(y, Mapping):
            values[f.name] = {k: x.get(k, 0) + y.get(k, 0) for k in {*x, *y}}
        else:
            values[f.name] = y
    return replace(a, **values)  # type: ignore[type-var]


def _add_forwarder(a: ForwarderStats | None, b: ForwarderStats) -> ForwarderStats:
    if a is None:
        return b
    times = [t for t in (a.last_success_time, b.last_success_time) if t is not None]
    return ForwarderStats(
        sent=a.sent + b.sent,
        retries=a.retries + b.retries,
        transient_errors=a.transient_errors + b.transient_errors,
        permanent_errors=a.permanent_errors + b.permanent_errors,
        last_success_time=max(times) if times else None,
        last_error=b.last_error or a.last_error,
    )

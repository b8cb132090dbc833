"""edge.iotedge.reporting: the module's counters across reconfigurations, its summary and its
state. The module end to end (reconfigured while counting, reporting through the real SDK) is
in tests/iotedge/test_module.py; here the rules, one by one, on the counters' own types."""

from __future__ import annotations

from typing import Any

from edge.delivery.forwarder import ForwarderStats
from edge.delivery.spool import SpoolStats
from edge.iotedge.reporting import ModuleCounters, module_state, summary
from edge.processing.decode import DecodeStats
from edge.processing.processor import PipelineStats

NOW = 1_700_000_000.0


def front(frames: int, **changes: Any) -> PipelineStats:
    values: dict[str, Any] = {
        "frames": frames,
        "decode": DecodeStats(
            frames=frames,
            decoded=frames - 2,
            repeated=1,
            skipped={"unknown_id": 1},
            lost=0,
        ),
        "samples": 10 * frames,
        "rows": 5 * frames,
        "batches": 2,
        "schemas": 1,
        "splits": 0,
        "raw_bytes": 16 * frames,
        "payload_bytes": frames,
        "sources": {"vehicle": {"frames": frames, "connected": True, "errors": 0}},
    }
    values.update(changes)
    return PipelineStats(**values)


def spool(depth: int = 0) -> SpoolStats:
    return SpoolStats(
        stream_id="s",
        next_seq=9,
        depth=depth,
        bytes=100 * depth,
        oldest_age=None,
        dropped_full=1,
        dropped_ttl=2,
        recovered_corrupt=0,
        dead_letters=3,
        file_bytes=4096,
    )


def forwarder(sent: int, last: float | None, error: str | None = None) -> ForwarderStats:
    return ForwarderStats(
        sent=sent,
        retries=1,
        transient_errors=1,
        permanent_errors=0,
        last_success_time=last,
        last_error=error,
    )


def test_counters_of_retired_fronts_and_forwarders_add_up() -> None:
    counters = ModuleCounters()
    counters.carry_front(front(100, sources={"old": {"frames": 100, "connected": True}}))
    counters.carry_forwarder(forwarder(5, NOW - 10, "TransientUplinkError: down"))
    total = counters.total(front(30), spool(depth=4), forwarder(2, None))
    assert total.frames == 130 and total.samples == 1300
    assert total.decode.decoded == 126 and total.decode.skipped == {"unknown_id": 2}
    assert total.sources["vehicle"] == {"frames": 30, "connected": True, "errors": 0}
    assert total.sources["old"] == {"frames": 100}  # no longer configured: not "connected"
    assert total.spool == spool(depth=4)  # the spool counts in its own file
    assert total.forwarder.sent == 7 and total.forwarder.retries == 2
    assert total.forwarder.last_success_time == NOW - 10  # the latest of both
    # The running forwarder's last error, else the last carried one.
    assert total.forwarder.last_error == "TransientUplinkError: down"


def test_with_nothing_carried_the_running_counters_are_the_total() -> None:
    running = front(30)
    total = ModuleCounters().total(running, spool(), forwarder(2, NOW))
    assert total.frames == 30 and total.forwarder == forwarder(2, NOW)


def test_state() -> None:
    def state(**changes: Any) -> tuple[str, str | None]:
        values: dict[str, Any] = {
            "stopping": False,
            "configured": True,
            "problems": (),
            "stats": front(1),
            "metrics_error": None,
        }
        return module_state(**{**values, **changes})

    assert state() == ("running", None)
    assert state(stopping=True, problems=("anything",)) == ("stopping", None)
    assert state(configured=False) == (
        "unconfigured",
        "no configuration yet: set the desired property 'config'",
    )
    down = front(1, sources={"vehicle": {"frames": 0, "connected": False, "errors": 3}})
    assert state(
        problems=("thread process died: boom",), stats=down, metrics_error="port taken"
    ) == ("degraded", "thread process died: boom; bus vehicle is not open; port taken")
    starting = front(1, sources={"vehicle": {"frames": 0, "connected": False, "errors": 0}})
    assert state(stats=starting) == ("running", None)  # not open yet, but no error either


def test_summary() -> None:
    assert summary(None, NOW) == {"at": "2023-11-14T22:13:20Z"}
    stats = ModuleCounters().total(front(30), spool(depth=4), forwarder(2, NOW))
    document = summary(stats, NOW)
    assert document["frames"] == 30 and document["decodedFrames"] == 28
    assert document["buses"] == [{"bus": "vehicle", "frames": 30, "connected": True, "errors": 0}]
    assert document["spoolDepth"] == 4 and document["droppedBatches"] == 3
    assert document["spoolDropped"] == {"full": 1, "ttl": 2}
    assert document["lastSendTime"] == "2023-11-14T22:13:20Z"
    assert "diagnostics" not in document and "campaigns" not in document
    with_campaigns = summary(
        ModuleCounters().total(
            front(30, campaigns={"history": {"frames": 7}, "braking": {"captures": 1}}),
            spool(),
            forwarder(0, None),
        ),
        NOW,
    )
    assert with_campaigns["campaignHistory"] == {"frames": 7}
    assert with_campaigns["campaigns"] == {"braking": {"captures": 1}}
    assert with_campaigns["lastSendTime"] is None

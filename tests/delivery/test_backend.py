"""edge.delivery.backend: spool -> forwarder -> uplink opened and closed as one, in order, and
nothing left open when opening fails half-way. Real parts: a real SQLite spool file, the real
forwarder thread, the real file uplink (subclassed only to note when it is closed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.config.model import Config, UplinkConfig, parse_config
from edge.delivery.backend import Backend, BackendSettings, configured_uplink
from edge.delivery.uplinks.base import Uplink
from edge.delivery.uplinks.file import FileUplink
from edge.errors import ConfigError, SpoolError
from edge.simulator.vehicle import DEMO_DBC
from edge.wire.payload import Payload


def config(tmp_path: Path, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "vehicle_id": "test-car",
        "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)]}],
        "spool": {"path": str(tmp_path / "spool" / "spool.db")},
        "uplink": {
            "type": "file",
            "path": str(tmp_path / "outbox"),
            "backoff_initial": 0.01,
            "backoff_max": 0.05,
        },
    }
    data.update(extra)
    return parse_config(data)


def spool_is_open(path: Path) -> bool:
    """SQLite removes the ``-wal`` file when the last connection to a WAL database closes."""
    return path.with_name(path.name + "-wal").exists()


class NotingUplink(FileUplink):
    """The real file uplink, noting what the back end looked like when it was closed."""

    def __init__(self, path: Path, backend: list[Backend]) -> None:
        super().__init__(path, fsync=False)
        self._backend = backend
        self.closed_with: dict[str, bool] | None = None

    def close(self) -> None:
        backend = self._backend[0] if self._backend else None
        self.closed_with = {
            # stop() of a stopped forwarder returns at once: True when its thread has ended
            "forwarder stopped": backend is not None and backend.forwarder.stop(timeout=0),
            "spool open": backend is not None and spool_is_open(backend.spool.path),
        }
        super().close()


def payload(stream: str, seq: int) -> Payload:
    return Payload(body=b"x" * 100, properties={"kind": "data", "stream": stream, "seq": str(seq)})


def test_open_start_close_in_order_and_drain(tmp_path: Path) -> None:
    settings = BackendSettings.of(config(tmp_path))
    spool_path = Path(settings.spool.path)
    made: list[Backend] = []
    seen: dict[str, bool] = {}

    def uplink(uplink_settings: UplinkConfig) -> Uplink:
        assert uplink_settings == settings.uplink
        seen["spool open when the uplink is built"] = spool_is_open(spool_path)
        return NotingUplink(tmp_path / "outbox", made)

    backend = Backend.open(settings, uplink=uplink)
    made.append(backend)
    assert seen == {"spool open when the uplink is built": True}
    for _ in range(5):  # appended before start: nothing is sent until then
        backend.spool.append(payload)
    assert backend.forwarder_stats().sent == 0
    backend.start()
    backend.close(drain_timeout=10)
    assert isinstance(backend.uplink, NotingUplink)
    assert backend.uplink.closed_with == {"forwarder stopped": True, "spool open": True}
    assert not spool_is_open(spool_path)
    with pytest.raises(SpoolError):
        backend.spool.stats()
    # The counters stay readable, as they were at close: everything drained and sent.
    assert backend.spool_stats().depth == 0
    assert backend.forwarder_stats().sent == 5
    assert len(list((tmp_path / "outbox").glob("*.ctl"))) == 5
    backend.close()  # twice is harmless


def test_the_configured_uplink_by_default(tmp_path: Path) -> None:
    settings = BackendSettings.of(config(tmp_path))
    backend = Backend.open(settings)
    try:
        assert isinstance(backend.uplink, FileUplink)
    finally:
        backend.close()
    assert isinstance(configured_uplink(settings.uplink), FileUplink)


def test_an_uplink_that_cannot_be_built_leaves_no_spool_open(tmp_path: Path) -> None:
    settings = BackendSettings.of(config(tmp_path))  # validation, which would refuse it, first
    (tmp_path / "outbox").write_text("a file where the outbox folder should be")
    with pytest.raises(ConfigError, match=r"uplink\.path"):
        Backend.open(settings)
    assert Path(settings.spool.path).exists()  # it was opened...
    assert not spool_is_open(Path(settings.spool.path))  # ...and closed again


def test_a_forwarder_that_cannot_be_built_leaves_nothing_open(tmp_path: Path) -> None:
    base = config(tmp_path)
    # Past validation (which refuses it): a real Forwarder refusing its settings.
    settings = replace(
        BackendSettings.of(base), forwarder=replace(base.forwarder, send_timeout=0.0)
    )
    made: list[NotingUplink] = []

    def uplink(_: UplinkConfig) -> Uplink:
        made.append(NotingUplink(tmp_path / "outbox", []))
        return made[0]

    with pytest.raises(ValueError, match="send_timeout"):
        Backend.open(settings, uplink=uplink)
    assert made[0].closed_with is not None  # the uplink was closed...
    assert not spool_is_open(Path(settings.spool.path))  # ...and the spool after it


def test_close_goes_on_past_a_failing_step(tmp_path: Path) -> None:
    class FailingClose(FileUplink):
        def close(self) -> None:
            raise OSError("the uplink could not let go")

    settings = BackendSettings.of(config(tmp_path))
    backend = Backend.open(settings, uplink=lambda _: FailingClose(tmp_path / "outbox"))
    backend.start()
    with pytest.raises(OSError, match="could not let go"):
        backend.close()
    assert not spool_is_open(Path(settings.spool.path))  # closed all the same
    assert backend.forwarder.stop(timeout=0)


def test_settings_compare_by_value(tmp_path: Path) -> None:
    first, second = config(tmp_path), config(tmp_path)
    assert BackendSettings.of(first) == BackendSettings.of(second)
    other = config(tmp_path, spool={"path": str(tmp_path / "spool.db"), "max_bytes": 2_000_000})
    assert BackendSettings.of(other) != BackendSettings.of(first)

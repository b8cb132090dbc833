"""edge.simulator.ecus: the simulated ECUs' answers (their ISO-TP side runs in
tests/diagnostics/test_scheduler.py), the clock they stamp frames with, and the demo on it."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

import can
import pytest

from edge.diagnostics.transport import IsoTpChannel
from edge.simulator.ecus import DEMO_VIN, OBD_ECM, SimulatedEcus, UdsServer, _obd_answer
from tests.support.waiting import wait_for


def test_uds_server_answers_dtcs_by_mask_dids_and_clear() -> None:
    server = UdsServer("BMS", {0x0A8000: 0x2F, 0x070000: 0x04}, {0xF190: b"VIN"})
    assert server.answer(bytes((0x19, 0x02, 0x08))) == bytes.fromhex("5902ff0a80002f")
    assert server.answer(bytes((0x22, 0xF1, 0x90))) == b"\x62\xf1\x90VIN"
    assert server.answer(bytes((0x22, 0x12, 0x34))) == bytes((0x7F, 0x22, 0x31))
    assert server.answer(bytes((0x14, 0xFF, 0xFF, 0xFF))) == b"\x54"
    assert server.dtcs == {} and server.clears == 1
    assert server.answer(bytes((0x27, 0x01))) == bytes((0x7F, 0x27, 0x11))


def test_obd_answers_supported_pids_values_and_vin() -> None:
    supported = _obd_answer(b"\x01\x00", {}, DEMO_VIN)
    assert supported is not None and supported[:2] == b"\x41\x00"
    assert _obd_answer(b"\x01\x0c", {"engine_speed": 1000.0}, DEMO_VIN) == b"\x41\x0c\x0f\xa0"
    assert _obd_answer(b"\x01\x42", {}, DEMO_VIN) is None  # unsupported: no answer
    assert _obd_answer(b"\x09\x02", {}, DEMO_VIN) == b"\x49\x02\x01" + DEMO_VIN.encode()


def test_every_frame_the_ecus_send_carries_their_clock() -> None:
    channel = f"ecus-{uuid.uuid4().hex[:12]}"
    simulated_time = 1_000.25  # far from the wall clock
    frames: list[can.Message] = []
    with (
        can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as ecu_bus,
        can.Bus(interface="virtual", channel=channel) as tester,
        can.Bus(interface="virtual", channel=channel) as listener,
    ):
        spy = can.Notifier(listener, [frames.append])
        ecus = SimulatedEcus(ecu_bus, clock=lambda: simulated_time, dm1_period=0.2)
        notifier = can.Notifier(tester, [], timeout=0.1)
        channel_ = IsoTpChannel(tester, notifier, *OBD_ECM, timeout=2.0)
        with ecus:
            channel_.open()
            try:
                # 20 bytes: a first frame and consecutive frames, paced by our flow control.
                vin = channel_.request(b"\x09\x02")
            finally:
                channel_.close()
                notifier.stop()
            wait_for(lambda: any(f.arbitration_id >> 8 & 0xFFFF == 0xEBFF for f in frames))
        spy.stop()
    assert vin == b"\x49\x02\x01" + DEMO_VIN.encode()
    sent = [f for f in frames if f.arbitration_id == OBD_ECM[1] or f.is_extended_id]
    kinds = {f.data[0] >> 4 for f in sent if f.arbitration_id == OBD_ECM[1]}
    assert kinds == {1, 2}  # first and consecutive frames of the answer
    assert any(f.is_extended_id for f in sent)  # DM1 by TP.BAM
    assert {f.timestamp for f in sent} == {simulated_time}


def test_the_demo_sees_no_time_step_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo drives on simulated time and its ECUs answer on it: the pipeline's time guard
    sees the clock neither jump nor step back (answers on the wall clock did: 31 steps back in
    120 s, each closing a batch early)."""
    from edge.cli import demo

    summaries: list[Any] = []
    summary = demo._print_demo_summary

    def keep(outbox: Path, stats: Any, *rest: Any) -> None:
        summaries.append(stats)
        summary(outbox, stats, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "_print_demo_summary", keep)
        args = argparse.Namespace(outbox=str(tmp_path), duration=60.0, seed=0, no_progress=True)
        assert demo._do_demo(args) == 0
    out = capsys.readouterr().out
    assert "VIN                WDEMO00CANTELEM01" in out  # the ECUs did answer
    [stats] = summaries
    [guard] = stats.sources.values()
    assert (guard["time_steps_back"], guard["time_jumps"], guard["bad_timestamp"]) == (0, 0, 0)

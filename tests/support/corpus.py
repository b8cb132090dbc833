"""The shared real-vehicle corpus (../shared/corpus): where it is, and how its logs map to DBCs.

Tests that use it skip with a reason when the folder is absent (a user's fresh clone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared"
CORPUS = SHARED / "corpus"


def require_corpus() -> Path:
    """The corpus folder, or skip the calling test with the reason."""
    if not CORPUS.is_dir():
        pytest.skip(f"real-vehicle corpus not found at {CORPUS} (../shared is absent)")
    return CORPUS


@dataclass(frozen=True)
class CorpusBus:
    """One bus of a corpus log: the log's channel name and the database that decodes it."""

    name: str
    dbc: str
    strict: bool = True
    j1939: bool = False
    log_channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class CorpusLog:
    """A corpus recording and its buses."""

    id: str
    log: str
    buses: tuple[CorpusBus, ...]
    extra_formats: tuple[str, ...] = field(default=())

    def path(self, suffix: str | None = None) -> Path:
        """The log file (optionally the same recording in another format)."""
        path = CORPUS / self.log
        return path.with_suffix(suffix) if suffix else path

    def config(self, **overrides: object) -> dict[str, object]:
        """A configuration mapping that replays this log."""
        channels = {ch: b.name for b in self.buses for ch in b.log_channels}
        data: dict[str, object] = {
            "vehicle_id": f"corpus-{self.id}",
            "buses": [
                {"name": b.name, "dbc": [str(CORPUS / b.dbc)], "strict": b.strict, "j1939": b.j1939}
                for b in self.buses
            ],
            "replay": {"log": str(self.path()), "speed": "max", "channels": channels},
        }
        data.update(overrides)
        return data


LOGS = (
    CorpusLog(
        "rav4",
        "toyota_rav4_2017/rav4_2018-08-02_seg40.log",
        (
            CorpusBus(
                "can0", "toyota_rav4_2017/toyota_new_mc_pt_generated.dbc", False, False, ("0",)
            ),
            CorpusBus("can1", "toyota_rav4_2017/toyota_adas.dbc", False, False, ("1",)),
        ),
        (".blf",),
    ),
    CorpusLog(
        "kona",
        "hyundai_kona_ev/230112-7-2019-pcan-ccan-power-off-on-ready-off.log",
        (CorpusBus("can0", "hyundai_kona_ev/pcan_patched.dbc", True, False, ("0",)),),
        (".asc", ".blf"),
    ),
    CorpusLog(
        "kona-bcan",
        "hyundai_kona_ev/221217-1-2021-pcan-bcan-no-key.log",
        (
            CorpusBus("can0", "hyundai_kona_ev/pcan_patched.dbc"),
            CorpusBus("can1", "hyundai_kona_ev/bcan_patched.dbc"),
        ),
    ),
    CorpusLog(
        "obd2-gnss",
        "css_obd2_gnss/obd2_3BA199E2_00000002.log",
        (
            CorpusBus("can1", "css_obd2_gnss/CSS-Electronics-OBD2-v1.4.dbc"),
            CorpusBus("can2", "css_obd2_gnss/canmod-gps.dbc"),
        ),
    ),
    CorpusLog(
        "j1939-truck",
        "j1939_truck/css_truck_idle_11111111.log",
        (CorpusBus("can1", "j1939_truck/CSS-Electronics-SAE-J1939-DEMO.dbc", True, True),),
    ),
    CorpusLog(
        "tesla",
        "tesla_model3/candump_Manual_SOC_DogMode_CabinTemp.log",
        (CorpusBus("vcan0", "tesla_model3/Model3CAN_kuksa.dbc"),),
    ),
)

"""edge.processing.database: CAN databases load, or fail with a DatabaseLoadError naming the file
and why.

The robustness test runs every file of the real-world DBC corpus (../shared/corpus/dbc_corpus)
through ``load_database`` in both modes: each one loads or is refused with our error, never any
other exception.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from cantools.database.can import Database

from edge.errors import DatabaseLoadError, TelemetryError
from edge.processing.database import (
    MAX_DATABASE_BYTES,
    load_database,
    load_database_repaired,
    load_databases,
)
from tests.support.corpus import CORPUS, require_corpus

ROOT = Path(__file__).resolve().parents[2]
DEMO_DBC = ROOT / "dbc" / "demo_vehicle.dbc"
DBC_CORPUS = CORPUS / "dbc_corpus"
FORMATS = {".dbc", ".arxml", ".kcd", ".sym"}

HEADER = 'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'

ENGINE_DBC = HEADER + (
    "BO_ 256 Engine: 8 ECU\n"
    ' SG_ Speed : 0|16@1+ (0.25,0) [0|8000] "rpm" Vector__XXX\n'
    ' SG_ Temp : 16|8@1+ (1,-40) [-40|215] "degC" Vector__XXX\n'
)
BODY_DBC = HEADER + (
    "BO_ 512 Doors: 1 ECU\n"
    ' SG_ DriverDoor : 0|1@1+ (1,0) [0|1] "" Vector__XXX\n'
    "BO_ 2566844926 Extended: 8 ECU\n"
    ' SG_ Value : 0|32@1+ (1,0) [0|4294967295] "" Vector__XXX\n'
)
# Two signals on the same bits: cantools refuses this in strict mode only.
OVERLAPPING_DBC = HEADER + (
    "BO_ 256 Engine: 8 ECU\n"
    ' SG_ Speed : 0|16@1+ (1,0) [0|65535] "" Vector__XXX\n'
    ' SG_ SpeedLow : 0|8@1+ (1,0) [0|255] "" Vector__XXX\n'
)
# The same frame id as ENGINE_DBC, under another name.
CONFLICTING_DBC = HEADER + (
    'BO_ 256 Transmission: 8 ECU\n SG_ Gear : 0|4@1+ (1,0) [0|15] "" Vector__XXX\n'
)


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def assert_refused(path: Path | str, *, strict: bool = True) -> DatabaseLoadError:
    """Loading ``path`` raises DatabaseLoadError naming it; returns the error."""
    with pytest.raises(DatabaseLoadError) as info:
        load_database(path, strict=strict)
    error = info.value
    assert isinstance(error, TelemetryError)
    assert error.path == os.fspath(path)
    assert os.fspath(path) in str(error)
    assert error.reason
    assert error.reason in str(error)
    return error


# --- the project's own database ------------------------------------------------------------------


def test_demo_dbc_loads_strictly() -> None:
    db = load_database(DEMO_DBC)
    assert isinstance(db, Database)
    assert len(db.messages) >= 10
    names = {m.name for m in db.messages}
    assert "ECM_EngineStatus" in names
    engine = db.get_message_by_name("ECM_EngineStatus")
    assert engine.frame_id == 0xA0
    decoded = engine.decode(engine.encode({s.name: 0 for s in engine.signals}))
    assert set(decoded) == {s.name for s in engine.signals}


def test_demo_dbc_has_can_fd_and_extended_frames() -> None:
    db = load_database(DEMO_DBC)
    assert any(m.is_fd for m in db.messages)
    assert any(m.is_extended_frame for m in db.messages)


def test_load_database_accepts_a_path_object_and_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, "engine.dbc", ENGINE_DBC)
    assert [m.name for m in load_database(path).messages] == ["Engine"]
    assert [m.name for m in load_database(str(path)).messages] == ["Engine"]


# --- strict mode ---------------------------------------------------------------------------------


def test_overlapping_signals_are_refused_strictly_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "overlap.dbc", OVERLAPPING_DBC)
    error = assert_refused(path, strict=True)
    assert "overlap" in error.reason.lower()
    assert "strict = false" in error.reason


def test_overlapping_signals_load_without_strict(tmp_path: Path) -> None:
    path = write(tmp_path, "overlap.dbc", OVERLAPPING_DBC)
    db = load_database(path, strict=False)
    assert [s.name for s in db.get_message_by_name("Engine").signals] == ["Speed", "SpeedLow"]


def test_without_strict_the_error_has_no_strict_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "garbage.dbc", "this is not a DBC file\n")
    error = assert_refused(path, strict=False)
    assert "strict" not in error.reason


def test_the_strict_hint_is_only_given_when_strict_false_would_help(tmp_path: Path) -> None:
    path = write(tmp_path, "garbage.dbc", "this is not a DBC file\n")
    assert_refused(path, strict=False)  # relaxing does not help here...
    error = assert_refused(path, strict=True)
    assert "strict" not in error.reason  # ...so the message should not suggest it


# --- failures name the file and the reason -------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error = assert_refused(tmp_path / "nope.dbc")
    assert error.reason == "file not found"
    assert isinstance(error.__cause__, FileNotFoundError)


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "dbc.dbc"
    folder.mkdir()
    assert assert_refused(folder).reason == "is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "secret.dbc", ENGINE_DBC)
    path.chmod(0)
    assert assert_refused(path).reason == "permission denied"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("garbage.dbc", "this is not a DBC file\n"),
        ("empty.dbc", ""),
        ("binary.dbc", bytes(range(256)) * 4),
        ("broken.kcd", "<NetworkDefinition><Bus>"),
        ("broken.arxml", "<?xml version='1.0'?><AUTOSAR>"),
        ("garbage.sym", "FormatVersion=6.0\n{SEND}\n[Broken\nID=zz\n"),
        ("notes.txt", "an unknown extension\n"),
    ],
)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "relaxed"])
def test_garbage_is_refused(tmp_path: Path, name: str, content: str | bytes, strict: bool) -> None:
    error = assert_refused(write(tmp_path, name, content), strict=strict)
    assert error.__cause__ is not None  # cantools' own exception is kept for the traceback


@pytest.mark.filterwarnings("ignore:cantools.database.diagnostics.Database is deprecated")
def test_a_diagnostics_database_is_not_a_can_database(tmp_path: Path) -> None:
    # A CANdela CDD file loads in cantools, as a diagnostics (DID) database.
    cdd = '<?xml version="1.0"?>\n<CANDELA><ECUDOC><ECU id="e"><VAR/></ECU></ECUDOC></CANDELA>\n'
    error = assert_refused(write(tmp_path, "ecu.cdd", cdd))
    assert error.reason == "not a CAN database (a diagnostics database?)"


@pytest.mark.parametrize("name", ["pcan.dbc", "bcan.dbc", "ccan.dbc"])
def test_unpatched_kona_dbcs_are_refused_strict_and_repaired_relaxed(name: str) -> None:
    # The originals lack the BS_:/BU_: sections; the corpus' *_patched.dbc copies add them.
    # Strict mode refuses what cantools refuses; the tolerant path adds the sections itself and
    # names the repair, giving the same messages as the hand-patched copy.
    path = require_corpus() / "hyundai_kona_ev" / name
    error = assert_refused(path, strict=True)
    assert "Invalid syntax" in error.reason
    assert "loads with strict = false" in error.reason
    repaired = load_database_repaired(path, strict=False)
    assert [r.what for r in repaired.repairs] == ["no BS_: and no BU_: section: empty ones assumed"]
    patched = load_database(path.with_name(path.stem + "_patched.dbc"), strict=True)
    assert [(m.frame_id, m.name, [s.name for s in m.signals]) for m in patched.messages] == [
        (m.frame_id, m.name, [s.name for s in m.signals]) for m in repaired.database.messages
    ]


def test_rav4_powertrain_dbc_needs_strict_false() -> None:
    path = require_corpus() / "toyota_rav4_2017" / "toyota_new_mc_pt_generated.dbc"
    assert "strict = false" in assert_refused(path, strict=True).reason
    assert len(load_database(path, strict=False).messages) > 50
    assert load_database(path.with_name("toyota_adas.dbc"), strict=True).messages


# --- several files on one bus --------------------------------------------------------------------


def test_load_databases_merges_files(tmp_path: Path) -> None:
    engine = write(tmp_path, "engine.dbc", ENGINE_DBC)
    body = write(tmp_path, "body.dbc", BODY_DBC)
    db = load_databases([str(engine), str(body)])
    assert sorted(m.name for m in db.messages) == ["Doors", "Engine", "Extended"]
    # The lookup tables of the merged database are refreshed: decoding by frame id works.
    assert db.get_message_by_frame_id(0x100).name == "Engine"
    assert db.get_message_by_frame_id(0x200).name == "Doors"
    extended = db.get_message_by_name("Extended")
    assert extended.is_extended_frame
    assert db.get_message_by_frame_id(extended.frame_id) is extended
    data = db.encode_message("Engine", {"Speed": 1000.0, "Temp": 20})
    assert db.decode_message(0x100, data) == {"Speed": 1000.0, "Temp": 20}


def test_load_databases_merges_with_the_demo_dbc(tmp_path: Path) -> None:
    body = write(tmp_path, "body.dbc", BODY_DBC)
    demo = load_database(DEMO_DBC)
    merged = load_databases([str(DEMO_DBC), str(body)])
    assert len(merged.messages) == len(demo.messages) + 2
    assert merged.get_message_by_frame_id(0xA0).name == "ECM_EngineStatus"
    assert merged.get_message_by_frame_id(0x200).name == "Doors"


def test_load_databases_with_one_file_is_load_database(tmp_path: Path) -> None:
    engine = write(tmp_path, "engine.dbc", ENGINE_DBC)
    db = load_databases((str(engine),))
    assert [m.name for m in db.messages] == ["Engine"]


def test_load_databases_names_the_failing_file(tmp_path: Path) -> None:
    engine = write(tmp_path, "engine.dbc", ENGINE_DBC)
    missing = tmp_path / "missing.dbc"
    with pytest.raises(DatabaseLoadError) as info:
        load_databases([str(engine), str(missing)])
    assert info.value.path == str(missing)
    assert info.value.reason == "file not found"


def test_load_databases_applies_strict_to_every_file(tmp_path: Path) -> None:
    engine = write(tmp_path, "engine.dbc", BODY_DBC)
    overlap = write(tmp_path, "overlap.dbc", OVERLAPPING_DBC)
    with pytest.raises(DatabaseLoadError) as info:
        load_databases([str(engine), str(overlap)], strict=True)
    assert info.value.path == str(overlap)
    merged = load_databases([str(engine), str(overlap)], strict=False)
    assert len(merged.messages) == 3


def test_load_databases_refuses_a_frame_id_defined_twice(tmp_path: Path) -> None:
    engine = write(tmp_path, "engine.dbc", ENGINE_DBC)
    other = write(tmp_path, "transmission.dbc", CONFLICTING_DBC)
    with pytest.raises(DatabaseLoadError, match=r"0x100|256"):
        load_databases([str(engine), str(other)])


# --- robustness over the real-world corpus -------------------------------------------------------


def _corpus_files() -> list[Path]:
    if not DBC_CORPUS.is_dir():
        return []
    return sorted(p for p in DBC_CORPUS.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS)


CORPUS_FILES = _corpus_files()
CORPUS_PARAMS = [
    pytest.param(p, id=p.relative_to(DBC_CORPUS).as_posix()) for p in CORPUS_FILES
] or [pytest.param(None, id="absent", marks=pytest.mark.skip(reason=f"{DBC_CORPUS} is absent"))]


@functools.cache
def corpus_outcome(path: Path, strict: bool) -> bool:
    """Whether ``path`` loads (True) or is refused with DatabaseLoadError (False). Any other
    exception propagates. Cached: the totals test reuses what the per-file tests measured."""
    try:
        db = load_database(path, strict=strict)
    except DatabaseLoadError as error:
        assert error.path == str(path)
        assert str(path) in str(error)
        assert error.reason
        return False
    assert isinstance(db, Database)
    return True


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "relaxed"])
@pytest.mark.parametrize("path", CORPUS_PARAMS)
def test_corpus_file_loads_or_is_refused_cleanly(path: Path, strict: bool) -> None:
    corpus_outcome(path, strict)


def test_corpus_outcomes() -> None:
    """Totals over the corpus: relaxing never loses a file, and the shares stay as measured
    with cantools 45.1 (see ../shared/corpus/README.md), so a regression in the loader shows."""
    require_corpus()
    outcome = {p: (corpus_outcome(p, True), corpus_outcome(p, False)) for p in CORPUS_FILES}
    assert len(outcome) >= 200
    assert all(relaxed for strict, relaxed in outcome.values() if strict)
    opendbc = [v for p, v in outcome.items() if p.relative_to(DBC_CORPUS).parts[0] == "opendbc"]
    assert sum(s for s, _ in opendbc) >= 44
    assert sum(r for _, r in opendbc) >= 44 + 15
    strict_share = sum(s for s, _ in outcome.values()) / len(outcome)
    assert strict_share > 0.6


def test_a_huge_database_is_refused_before_parsing(tmp_path: Path) -> None:
    huge = tmp_path / "huge.dbc"
    with huge.open("wb") as f:  # sparse: no 17 MB written
        f.truncate(MAX_DATABASE_BYTES + 1)
    with pytest.raises(DatabaseLoadError, match=r"huge.dbc: 16.8 MB is larger than the 16 MiB"):
        load_database(huge, cache=False)

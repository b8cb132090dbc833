"""The tolerant DBC load path: each quirk real files have is repaired, named, and the repaired
text decodes as cantools decodes it; a file that loads is never changed."""

from __future__ import annotations

import logging
from pathlib import Path

import cantools
import pytest

from edge.errors import DatabaseLoadError
from edge.processing.database import load_database, load_database_repaired
from edge.processing.repair import repair_dbc
from tests.support.corpus import CORPUS, require_corpus

HEADER = 'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'


def load_text(text: str) -> cantools.database.can.Database:
    db = cantools.database.load_string(text, database_format="dbc", strict=False)
    assert isinstance(db, cantools.database.can.Database)
    return db


def test_a_file_without_quirks_is_not_changed() -> None:
    text = HEADER + 'BO_ 100 Speed: 8 ECU\n SG_ V : 0|16@1+ (0.01,0) [0|655.35] "km/h" ECU\n'
    assert repair_dbc(text) == (text, [])


def test_29_bit_ids_without_the_extended_flag_become_extended_everywhere() -> None:
    text = HEADER + (
        "BO_ 316495015 VZE_04: 8 ECU\n"
        ' SG_ Limit : 0|8@1+ (1,0) [0|255] "km/h" ECU\n\n'
        'CM_ BO_ 316495015 "traffic signs";\n'
        'CM_ SG_ 316495015 Limit "speed limit";\n'
        'BA_DEF_ BO_ "GenMsgCycleTime" INT 0 65535;\n'
        'BA_ "GenMsgCycleTime" BO_ 316495015 100;\n'
        'VAL_ 316495015 Limit 255 "none" ;\n'
    )
    fixed, repairs = repair_dbc(text)
    assert [r.line for r in repairs] == [9]
    assert "0x12dd54a7" in repairs[0].what and "extended" in repairs[0].what
    db = load_text(fixed)
    (message,) = db.messages
    assert message.frame_id == 0x12DD54A7 and message.is_extended_frame
    assert message.comment == "traffic signs"
    assert message.signals[0].comment == "speed limit"
    assert message.signals[0].choices == {255: "none"}
    assert message.cycle_time == 100
    assert db.decode_message(0x12DD54A7, b"\xff" + bytes(7), force_extended_id=True) == {
        "Limit": "none"
    }


def test_an_id_that_fits_no_can_id_drops_its_message_only() -> None:
    text = HEADER + (
        "BO_ 1075054137 Broken: 8 ECU\n"
        ' SG_ A : 0|8@1+ (1,0) [0|255] "" ECU\n\n'
        'CM_ BO_ 1075054137 "a comment\nover two lines";\n'
        "BO_ 100 Fine: 8 ECU\n"
        ' SG_ B : 0|8@1+ (1,0) [0|255] "" ECU\n'
    )
    fixed, repairs = repair_dbc(text)
    assert [r.what for r in repairs] == [
        "frame id 0x40140639 fits neither 11 nor 29 bits: message dropped"
    ]
    assert [m.name for m in load_text(fixed).messages] == ["Fine"]


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('CM_ SG_ 100 "about the message";', "signal comment without a signal name"),
        ('CM_ 100 "about the message";', "comment on a bare frame id"),
    ],
)
def test_comment_forms_become_message_comments(line: str, what: str) -> None:
    text = HEADER + f'BO_ 100 M: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|255] "" ECU\n\n{line}\n'
    fixed, repairs = repair_dbc(text)
    assert len(repairs) == 1 and repairs[0].what.startswith(what) and repairs[0].line == 12
    assert load_text(fixed).messages[0].comment == "about the message"


def test_short_numbers_digit_names_missing_sections_and_unused_value_tables() -> None:
    text = (
        'VERSION ""\n\nNS_ :\n\n'
        "BO_ 1275 2017_5: 8 XXX\n"
        ' SG_ 0_COUNTER : 7|8@0+ (.25,-.5) [0|63.75] "" XXX\n\n'
        'CM_ SG_ 1275 0_COUNTER "0_COUNTER counts";\n'
        'VAL_ 1275 0_COUNTER 0 "zero" ;\n'
        'VAL_ 1275 Missing 1 "one" ;\n'
        'VAL_ 1275 0_COUNTER 1 "one"\n'
    )
    fixed, repairs = repair_dbc(text)
    whats = [r.what for r in repairs]
    assert whats[0] == "no BS_: and no BU_: section: empty ones assumed"
    assert "message name 2017_5 starts with a digit: renamed _2017_5" in whats
    assert "signal name 0_COUNTER starts with a digit: renamed _0_COUNTER" in whats
    assert any("leading zero" in w for w in whats)
    assert any("Missing" in w and "no such signal" in w for w in whats)
    assert any("closing ';'" in w for w in whats)
    (message,) = load_text(fixed).messages
    assert message.name == "_2017_5"
    (signal,) = message.signals
    assert (signal.name, signal.scale, signal.offset) == ("_0_COUNTER", 0.25, -0.5)
    assert signal.comment == "0_COUNTER counts"  # quoted text is never renamed
    assert signal.choices == {1: "one"}  # the later table wins, as in cantools


def test_strict_mode_never_repairs(tmp_path: Path) -> None:
    path = tmp_path / "short.dbc"
    path.write_text(HEADER + 'BO_ 100 M: 8 ECU\n SG_ A : 0|8@1+ (.5,0) [0|1] "" ECU\n')
    with pytest.raises(DatabaseLoadError, match="loads with strict = false"):
        load_database(path, strict=True, cache=False)
    loaded = load_database_repaired(path, strict=False, cache=False)
    assert loaded.database.messages[0].signals[0].scale == 0.5 and len(loaded.repairs) == 1


def test_a_file_that_cannot_be_repaired_is_refused_with_cantools_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.dbc"
    path.write_text(HEADER + "BO_ 100 M: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|1] ECU\n")  # no unit
    with pytest.raises(DatabaseLoadError, match="Invalid syntax"):
        load_database(path, strict=False, cache=False)


def test_repairs_are_warned_once_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "short.dbc"
    path.write_text(
        HEADER + 'BO_ 100 M: 8 ECU\n SG_ A : 0|8@1+ (.5,0) [0|1] "" ECU\n'
        ' SG_ B : 8|8@1+ (.5,0) [0|1] "" ECU\n'
    )
    with caplog.at_level(logging.WARNING, logger="edge.processing.database"):
        load_database(path, strict=False, cache=False)
    # Only this logger's: threads other tests left running may log meanwhile.
    (record,) = [r for r in caplog.records if r.name == "edge.processing.database"]
    assert (
        "loaded after 2 repair(s)" in record.getMessage() and "short.dbc:10:" in record.getMessage()
    )


def opendbc_files() -> list[Path]:
    folder = CORPUS / "dbc_corpus" / "opendbc"
    return sorted(folder.glob("*.dbc")) if folder.is_dir() else []


def test_every_opendbc_file_of_the_corpus_loads_with_its_repairs_listed() -> None:
    require_corpus()
    files = opendbc_files()
    assert len(files) == 89
    repaired = {}
    for path in files:
        loaded = load_database_repaired(path, strict=False, cache=False)
        assert loaded.database.messages, path.name
        if loaded.repairs:
            repaired[path.name] = len(loaded.repairs)
    # Every Volkswagen platform among them, the MEB and MQB Evo ones through repairs.
    for name in ("vw_meb_generated.dbc", "vw_meb_2024_generated.dbc", "vw_mqbevo.dbc"):
        assert repaired[name] > 0
    assert len(repaired) == 30, sorted(repaired)

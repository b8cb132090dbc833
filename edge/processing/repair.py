"""Repairs for the quirks real DBC files have, for the tolerant load path (``strict = false``).

cantools refuses many DBC files that the field uses: a third of opendbc's. The reasons are few
and mechanical (a comment form other tools accept, a factor written ``.25``, 29-bit IDs written
without the extended flag, value tables of signals that do not exist...). Rather than parse DBC
ourselves, :func:`repair_dbc` rewrites the *text* so that cantools parses it, and names every
change it made (file line and what was assumed) as a :class:`Repair`. Nothing is guessed
silently: what cannot be repaired here is refused by cantools with its own reason.

Each repair is applied only where its quirk is present, and the caller (edge.processing.database)
only
repairs a file cantools refuses as it is, so a file that loads is never changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Repair", "repair_dbc"]

#: The standard-frame limit and the extended-frame flag of DBC frame ids.
_STANDARD_MAX = 0x7FF
_EXTENDED_MAX = 0x1FFFFFFF
_EXTENDED_FLAG = 0x80000000

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_DIGIT_NAME = r"[0-9][A-Za-z0-9_]*[A-Za-z_][A-Za-z0-9_]*"  # starts with a digit, not a number
_BO = re.compile(r"^(BO_\s+)(\d+)(\s+)(\S+?)(\s*:.*)$")
_SG = re.compile(r"^(\s+SG_\s+)(\S+)(\s.*)$")
_CM_SG_NO_NAME = re.compile(r'^(CM_\s+)SG_(\s+\d+\s+")')
_CM_BARE_ID = re.compile(r'^(CM_\s+)(\d+\s+")')
_CM_OPEN = re.compile(r'^CM_\s+(?:(?:BU_|EV_)\s+\S+\s+|(?:BO_\s+\d+|SG_\s+\d+\s+\S+)\s+)?"')
_SHORT_NUMBER = re.compile(r"(?<![\w.])(-?)\.(\d)")
_VAL = re.compile(r"^VAL_\s+(\d+)\s+(\S+)\s")
#: Statements that name a message by its frame id: the id is the first number after the keyword.
_ID_REFERENCE = re.compile(
    r"^(?P<head>(?:BO_|VAL_|SIG_VALTYPE_|SG_MUL_VAL_|BO_TX_BU_|SIG_GROUP_)\s+"
    r"|CM_\s+(?:BO_|SG_)\s+"
    r'|BA_\s+"[^"]*"\s+(?:BO_|SG_)\s+'
    r"|BA_REL_\s+\"[^\"]*\"\s+BU_SG_REL_\s+\S+\s+SG_\s+)(?P<id>\d+)\b"
)
#: Statements whose signal names a renamed signal may appear in (outside quoted text).
_SIGNAL_REFERENCES = ("CM_", "VAL_", "BA_", "SIG_VALTYPE_", "SG_MUL_VAL_", "SIG_GROUP_")


@dataclass(frozen=True, slots=True)
class Repair:
    """One change made to a database's text so that cantools loads it."""

    line: int  # 1-based line in the original file (0: the file as a whole)
    what: str

    def describe(self, path: str) -> str:
        """``path:line: what`` (``path: what`` for a change to the file as a whole)."""
        return f"{path}:{self.line}: {self.what}" if self.line else f"{path}: {self.what}"


def repair_dbc(text: str) -> tuple[str, list[Repair]]:
    """``text`` with every quirk it has repaired, and the repairs made (none: unchanged text)."""
    lines = text.splitlines()
    repairs: list[Repair] = []
    _section_headers(lines, repairs)
    renames = _digit_names(lines, repairs)
    extended, dropped = _unflagged_extended_ids(lines)
    signals = _defined_signals(lines)
    out: list[str] = []
    in_string = False  # inside a multi-line quoted string (a long comment)
    skipping = False  # inside a statement (or a message's signals) that is dropped
    for number, line in enumerate(lines, 1):
        if in_string:
            if not skipping:
                out.append(line)
            in_string = line.count('"') % 2 == 0
            continue
        if skipping and _SG.match(line):
            continue
        skipping = False
        reference = _ID_REFERENCE.match(line)
        if reference and int(reference["id"]) in dropped:
            if line.startswith("BO_"):
                repairs.append(
                    Repair(
                        number,
                        f"frame id {int(reference['id']):#x} fits neither 11 nor 29 bits: "
                        "message dropped",
                    )
                )
            skipping = True
            in_string = line.count('"') % 2 == 1
            continue
        match = _VAL.match(line)
        if match and (int(match[1]), match[2]) not in signals:
            repairs.append(
                Repair(
                    number,
                    f"value table of {match[2]} in message {match[1]}, which has no such signal: "
                    "ignored",
                )
            )
            in_string = line.count('"') % 2 == 1
            continue
        line = _comment_forms(line, number, repairs)
        line = _unterminated(line, number, repairs)
        line = _short_numbers(line, number, repairs)
        line = _extended_ids(line, number, extended, repairs)
        if renames:
            line = _rename(line, renames)
        out.append(line)
        in_string = line.count('"') % 2 == 1
    if not repairs:
        return text, []
    return "\n".join(out) + "\n", repairs


def _section_headers(lines: list[str], repairs: list[Repair]) -> None:
    """A file without the ``BS_:`` (bit timing) or ``BU_:`` (nodes) section, which cantools'
    grammar requires before the messages, gets empty ones."""
    keywords = {line.split(":", 1)[0].strip() for line in lines if line[:3] in ("BS_", "BU_")}
    first_message = next((i for i, line in enumerate(lines) if line.startswith("BO_ ")), None)
    if first_message is None:
        return
    missing = [k for k in ("BS_", "BU_") if k not in keywords]
    if not missing:
        return
    # Insert at the end of the NS_ block (its indented lines) or before the first BO_.
    at = first_message
    for i, line in enumerate(lines[:first_message]):
        if line.startswith("NS_"):
            at = i + 1
            while at < first_message and (lines[at].startswith((" ", "\t")) or not lines[at]):
                at += 1
            break
    inserted = [f"{k}:" for k in missing]
    lines[at:at] = [*inserted, ""]
    repairs.append(
        Repair(0, f"no {' and no '.join(k + ':' for k in missing)} section: empty ones assumed")
    )


def _digit_names(lines: list[str], repairs: list[Repair]) -> dict[str, str]:
    """Message and signal names that start with a digit (``2017_5``, ``0_COUNTER``), which the
    DBC grammar forbids: renamed with a leading underscore. Returns old -> new."""
    renames: dict[str, str] = {}
    taken = set()
    for line in lines:
        for pattern, group in ((_BO, 4), (_SG, 2)):
            match = pattern.match(line)
            if match:
                taken.add(match[group].split()[0])
    for number, line in enumerate(lines, 1):
        match = _BO.match(line)
        name = match[4] if match else None
        kind = "message"
        if name is None:
            match = _SG.match(line)
            name, kind = (match[2], "signal") if match else (None, "")
        if name is None or not re.fullmatch(_DIGIT_NAME, name) or name in renames:
            continue
        new = "_" + name
        while new in taken:
            new = "_" + new
        taken.add(new)
        renames[name] = new
        repairs.append(Repair(number, f"{kind} name {name} starts with a digit: renamed {new}"))
    return renames


def _rename(line: str, renames: dict[str, str]) -> str:
    """Rename in a definition or a statement that refers to signals, outside quoted text."""
    if not (_BO.match(line) or _SG.match(line) or line.startswith(_SIGNAL_REFERENCES)):
        return line
    parts = line.split('"')
    for i in range(0, len(parts), 2):  # even parts are outside quotes
        parts[i] = re.sub(
            r"(?<![\w.])(" + "|".join(map(re.escape, renames)) + r")(?![\w.])",
            lambda m: renames[m[1]],
            parts[i],
        )
    return '"'.join(parts)


def _unflagged_extended_ids(lines: list[str]) -> tuple[set[int], set[int]]:
    """Frame ids (as written) of messages above 11 bits without the extended flag, and of
    messages whose id fits no CAN id at all (more than 29 bits, flag aside)."""
    extended, unusable = set(), set()
    for line in lines:
        match = _BO.match(line)
        if match:
            frame_id = int(match[2])
            if _STANDARD_MAX < frame_id <= _EXTENDED_MAX:
                extended.add(frame_id)
            elif frame_id & ~_EXTENDED_FLAG > _EXTENDED_MAX:
                unusable.add(frame_id)
    return extended, unusable


def _unterminated(line: str, number: int, repairs: list[Repair]) -> str:
    """A one-line ``VAL_`` statement without its closing ``;``."""
    if line.startswith("VAL_ ") and line.count('"') % 2 == 0 and not line.rstrip().endswith(";"):
        repairs.append(Repair(number, "value table without its closing ';': added"))
        return line.rstrip() + " ;"
    return line


def _extended_ids(line: str, number: int, extended: set[int], repairs: list[Repair]) -> str:
    match = _ID_REFERENCE.match(line)
    if not match or int(match["id"]) not in extended:
        return line
    frame_id = int(match["id"])
    if line.startswith("BO_"):
        repairs.append(
            Repair(
                number,
                f"frame id {frame_id:#x} has more than 11 bits but no extended flag: "
                "taken as a 29-bit (extended) id",
            )
        )
    return line[: match.start("id")] + str(frame_id | _EXTENDED_FLAG) + line[match.end("id") :]


def _comment_forms(line: str, number: int, repairs: list[Repair]) -> str:
    if not line.startswith("CM_"):
        return line
    match = _CM_SG_NO_NAME.match(line)
    if match:
        repairs.append(
            Repair(number, "signal comment without a signal name: taken as the message's comment")
        )
        return match[1] + "BO_" + line[match.end(1) + 3 :]
    match = _CM_BARE_ID.match(line)
    if match:
        repairs.append(Repair(number, "comment on a bare frame id: taken as the message's comment"))
        return match[1] + "BO_ " + line[match.end(1) :]
    if _CM_OPEN.match(line) and line.count('"') % 2 == 0 and not line.rstrip().endswith(";"):
        repairs.append(Repair(number, "comment without its closing ';': added"))
        return line.rstrip() + ";"
    return line


def _short_numbers(line: str, number: int, repairs: list[Repair]) -> str:
    """``(.25,-500)`` in a signal definition: a number written without its leading zero."""
    match = _SG.match(line)
    if not match:
        return line
    head, rest = line.split('"', 1) if '"' in line else (line, None)
    fixed = _SHORT_NUMBER.sub(r"\g<1>0.\2", head)
    if fixed == head:
        return line
    repairs.append(Repair(number, "number written without its leading zero (.25): read as 0.25"))
    return fixed if rest is None else fixed + '"' + rest


def _defined_signals(lines: list[str]) -> set[tuple[int, str]]:
    """(frame id as written, signal name) of every signal definition."""
    signals = set()
    current: int | None = None
    for line in lines:
        match = _BO.match(line)
        if match:
            current = int(match[2])
            continue
        match = _SG.match(line)
        if match and current is not None:
            signals.add((current, match[2]))
    return signals

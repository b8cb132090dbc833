"""Condition inputs in multiplexed messages, read without decoding the whole message: every
reader the engine builds, on every database of the corpus, against cantools' decode."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from cantools.database.can import Message

from edge.campaigns.engine import _Decoding, _Undefined
from tests.processing.test_differential import database_files, load
from tests.processing.test_fused import branches
from tests.support.corpus import CORPUS, require_corpus

REFUSED = object()  # cantools refuses the frame


def cantools_value(message: Message, data: bytes, name: str) -> Any:
    try:
        return message.decode(data, False, False).get(name)
    except Exception:
        return REFUSED


def reader_value(read: Any, data: bytes) -> Any:
    try:
        return read(data)
    except _Undefined:
        return REFUSED


def payloads(message: Message, seed: int) -> list[bytes]:
    """Random payloads, and one per multiplexer branch (encoded by cantools, the rest 0)."""
    rng = random.Random(seed)
    out = [rng.randbytes(message.length) for _ in range(12)]
    zeros = {signal.name: 0 for signal in message.signals}
    for assignment in branches(message.signal_tree, cap=60):
        try:
            out.append(bytes(message.encode({**zeros, **assignment}, scaling=False, strict=False)))
        except Exception:  # cantools cannot encode that branch: random payloads cover it
            continue
    return out


def check_database(path: Path) -> tuple[int, int]:
    """(readers built, payloads compared) for the multiplexed messages of ``path``."""
    database = load(path).db
    built = compared = 0
    for number, message in enumerate(database.messages):
        if not message.is_multiplexed() or not 0 < message.length <= 64:
            continue
        decoding = _Decoding(message)
        data = payloads(message, number)
        for signal in message.signals:
            read = decoding.multiplexed(message, signal.name)
            if read is None:
                continue
            built += 1
            for payload in data:
                want = cantools_value(message, payload, signal.name)
                got = reader_value(read, payload)
                assert got is want or (type(got) is type(want) and got == want), (
                    f"{path.name}: {message.name}.{signal.name} on {payload.hex()}: "
                    f"read {got!r}, cantools {want!r}"
                )
                compared += 1
    return built, compared


@pytest.mark.parametrize("path", database_files(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_reader_gives_what_cantools_gives(path: Path) -> None:
    check_database(path)  # load() skips a database cantools cannot load, with the reason


def test_readers_are_built_for_the_corpus_multiplexed_inputs() -> None:
    """The readers exist where they matter: Tesla's multiplexed status messages and the OBD-II
    PID multiplexers (nested under the service), not only in principle."""
    corpus = require_corpus()
    tesla = check_database(corpus / "tesla_model3" / "Model3CAN_joshwardell.dbc")
    obd = check_database(corpus / "css_obd2_gnss" / "CSS-Electronics-OBD2-v1.4.dbc")
    assert tesla[0] > 100 and obd[0] > 100
    assert tesla[1] > 1000 and obd[1] > 1000

"""``can-telemetry plot``: signals over time from a lake, an outbox or payload/Avro files, drawn
with matplotlib (PNG or SVG by the output's suffix). One panel per signal; a signal with choice
names is drawn as steps labelled with those names."""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from edge.errors import ConfigError
from edge.lake.arrow import SchemaBook, decode
from edge.lake.avro import read_source, source_files
from edge.lake.local import read_table
from edge.lake.tables import SIGNALS

__all__ = ["draw", "load_rows", "parse_when"]


def parse_when(text: str | None, option: str) -> float | None:
    """``--from``/``--to``: seconds (epoch or relative), or an ISO 8601 time (UTC if no zone).
    Raises ConfigError naming the option."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(option, f"{text!r} is neither seconds nor an ISO 8601 time") from exc
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _is_lake(path: Path) -> bool:
    return (path / "signals").is_dir()


def load_rows(
    sources: Sequence[str | os.PathLike[str]],
    *,
    vehicle: str | None = None,
    signals: Sequence[str] | None = None,
    start: float | None = None,
    end: float | None = None,
) -> pa.Table:
    """The ``signals`` rows of the sources that match: a lake's table, or the payloads of
    outbox/Avro files decoded in memory (each (stream, seq) once)."""
    tables = []
    files: list[str | os.PathLike[str]] = []
    for source in sources:
        if _is_lake(Path(source)):
            tables.append(read_table(Path(source), "signals").select(SIGNALS.names))
        else:
            files.append(source)
    if files:
        book = SchemaBook()
        seen: set[tuple[str, int]] = set()
        for path in source_files(files):
            for batch in read_source(path):
                decoded = decode(batch, book)
                outcomes = decoded.outcomes.to_pydict()
                keep = []
                for stream, seq, status in zip(
                    outcomes["stream"], outcomes["seq"], outcomes["status"], strict=True
                ):
                    fresh = status == "ok" and (stream, seq) not in seen
                    seen.add((stream, seq))
                    keep.append(fresh)
                mask = pc.take(pa.array(keep), decoded.payload_index)
                tables.append(pa.Table.from_batches([decoded.rows.filter(mask)], SIGNALS))
    table = pa.concat_tables(tables) if tables else SIGNALS.empty_table()
    if vehicle is not None:
        table = table.filter(pc.equal(table.column("vehicle"), vehicle))
    if signals:
        names = set(table.column("signal").unique().to_pylist())
        chosen = sorted(n for n in names if any(fnmatch.fnmatchcase(n, g) for g in signals))
        table = table.filter(pc.is_in(table.column("signal"), pa.array(chosen, pa.string())))
    if start is not None:
        table = table.filter(pc.greater_equal(table.column("time"), start))
    if end is not None:
        table = table.filter(pc.less_equal(table.column("time"), end))
    return table.sort_by([("vehicle", "ascending"), ("signal", "ascending"), ("time", "ascending")])


def draw(rows: pa.Table, output: str | os.PathLike[str], *, max_signals: int = 12) -> int:
    """Draw ``rows`` (the ``signals`` columns) into ``output``: one panel per (vehicle, signal),
    at most ``max_signals``. Returns the number of panels."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    data = rows.select(["vehicle", "signal", "unit", "time", "value", "choice", "time_base"])
    columns = data.to_pydict()
    series: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for vehicle, signal, unit, time, value, choice, base in zip(*columns.values(), strict=True):
        entry = series.setdefault(
            (vehicle, signal), {"t": [], "v": [], "c": [], "unit": [unit], "base": [base]}
        )
        entry["t"].append(time)
        entry["v"].append(value)
        entry["c"].append(choice)
    keys = sorted(series)[:max_signals]
    if not keys:
        raise ConfigError("--signal", "nothing to draw")
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 1.8 * len(keys) + 0.6), sharex=True)
    axes_list = [axes] if len(keys) == 1 else list(axes)
    epoch = all(series[k]["base"][0] == "epoch" for k in keys)
    for ax, key in zip(axes_list, keys, strict=True):
        entry = series[key]
        times: list[Any] = list(entry["t"])
        if epoch:
            times = [dt.datetime.fromtimestamp(t, dt.UTC) for t in entry["t"]]
        if any(c is not None for c in entry["c"]):
            # Choice-valued: steps, the y axis labelled with the names seen.
            labels = {v: c for v, c in zip(entry["v"], entry["c"], strict=True) if c is not None}
            ax.step(times, entry["v"], where="post", linewidth=1)
            ax.set_yticks(sorted(labels), [str(labels[v]) for v in sorted(labels)], fontsize=7)
        else:
            ax.plot(times, entry["v"], linewidth=1)
        unit = entry["unit"][0]
        ax.set_ylabel(f"{key[1]}\n[{unit}]" if unit else key[1], fontsize=7, rotation=0, ha="right")
        ax.grid(True, linewidth=0.3)
    if epoch:
        formatter = mdates.DateFormatter("%H:%M:%S")  # type: ignore[no-untyped-call]
        axes_list[-1].xaxis.set_major_formatter(formatter)
        axes_list[-1].set_xlabel("time (UTC)")
    else:
        axes_list[-1].set_xlabel("time (s, relative)")
    vehicles = sorted({k[0] for k in keys})
    fig.suptitle(", ".join(vehicles), fontsize=9)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return len(keys)

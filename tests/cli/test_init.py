"""``can-telemetry``'s parser as a whole: every command and its options, as users see them."""

from __future__ import annotations

import pytest

from edge.cli import main

#: Every command's options as ``--help`` listed them before the commands became one module each
#: (issue 15): a command, an option or a positional argument that goes missing, or appears, is a
#: change users see. ``module --help`` is the IoT Edge module's own parser.
OPTIONS: dict[str, set[str]] = {
    "": {
        "-h",
        "--help",
        "--version",
        "--log-level",
        "{run,demo,simulate,dbc,decode,manifest,module,lake,plot}",
    },
    "run": {"-h", "--help", "--config", "--replay", "--speed", "--vehicle-id"},
    "demo": {"-h", "--help", "--duration", "--outbox", "--seed", "--no-progress"},
    "simulate": {
        "-h",
        "--help",
        "--interface",
        "--channel",
        "--dbc",
        "--duration",
        "--speed",
        "--fd",
        "--seed",
        "--ecus",
    },
    "dbc": {"-h", "--help", "file", "--no-strict", "--signals"},
    "decode": {"-h", "--help", "paths", "--format", "--output", "-o"},
    "manifest": {"-h", "--help", "--template", "--module", "--platform", "--output", "-o"},
    "module": {
        "-h",
        "--help",
        "--version",
        "--config",
        "--data-dir",
        "--metrics-host",
        "--metrics-port",
        "--report-interval",
        "--stall-after",
        "--no-edge",
        "--log-level",
    },
    "lake": {"-h", "--help", "{ingest,stream,repair}"},  # repair: issue 14, after the split
    "lake ingest": {"-h", "--help", "sources", "--lake", "--engine", "--master"},
    "lake stream": {
        "-h",
        "--help",
        "source",
        "--lake",
        "--checkpoint",
        "--master",
        "--watermark",
        "--available-now",
    },
    "lake repair": {"-h", "--help", "--lake", "--engine", "--master", "--from", "--to"},
    "plot": {
        "-h",
        "--help",
        "sources",
        "--vehicle",
        "--signal",
        "--from",
        "--to",
        "--output",
        "-o",
        "--max-signals",
    },
}


def help_text(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """What ``can-telemetry COMMAND --help`` prints; it exits 0."""
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def listed_options(text: str) -> set[str]:
    """The option strings and positional arguments of a ``--help`` text: the first words of
    its lines under ``options:`` and ``positional arguments:``, as argparse formats them (the
    subcommands as their choice, ``{run,demo,...}``, in order)."""
    found: set[str] = set()
    section = ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line
            continue
        if section not in ("options:", "positional arguments:") or not line.startswith("  "):
            continue
        if line.startswith("   "):  # an option's help wrapped onto its own line
            continue
        invocation = line.strip().split("  ")[0]  # "-o OUTPUT, --output OUTPUT", "file"
        found.update(part.split()[0] for part in invocation.split(", "))
    return found


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_every_command_keeps_its_options(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps at the terminal's width
    assert listed_options(help_text(capsys, command)) == OPTIONS[command]

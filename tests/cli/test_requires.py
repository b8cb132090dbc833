"""What the CLI says when a command needs a library of an extra this install left out (the
end-to-end check, in an interpreter where the in-vehicle stack cannot be imported, is
tests/lake/test_package.py)."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from edge.cli.requires import EXTRAS, command_name, missing_dependency

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_library_of_an_extra_becomes_what_to_install() -> None:
    error = missing_dependency(ModuleNotFoundError("x", name="can.interfaces"), "run")
    assert error is not None
    assert str(error) == "can-telemetry run needs python-can: pip install 'can-telemetry[edge]'"
    error = missing_dependency(ModuleNotFoundError("x", name="pyarrow"), "lake ingest")
    assert (
        str(error) == "can-telemetry lake ingest needs pyarrow: pip install 'can-telemetry[lake]'"
    )


def test_a_module_of_no_extra_is_left_alone() -> None:
    assert missing_dependency(ModuleNotFoundError("x", name="edge.nothing"), "run") is None
    assert missing_dependency(ModuleNotFoundError("x"), "run") is None


def test_the_table_names_the_extras_of_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for distribution, extra in EXTRAS.values():
        names = [Requirement(requirement).name for requirement in extras[extra]]
        assert distribution in names, (distribution, extra)


def test_the_command_as_typed() -> None:
    assert command_name(argparse.Namespace(command="lake", lake_command="ingest")) == "lake ingest"
    assert command_name(argparse.Namespace(command="run")) == "run"

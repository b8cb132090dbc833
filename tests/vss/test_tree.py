"""The VSS tree: the bundled VSS 6.0 catalog is vss-tools' output for the corpus's sources, and
any tree a user points to (a vss-tools JSON export, a .vspec root) loads the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.vss.tree import (
    DEFAULT_TREE,
    DEFAULT_UNITS,
    VssTreeError,
    default_tree,
    generate,
    load_tree,
)
from tests.support.corpus import require_corpus
from tests.support.vss import small_vspec_tree


def test_default_tree_is_vss_6_with_units() -> None:
    tree = default_tree()
    speed = tree.node("Vehicle.Speed")
    assert speed is not None and (speed.datatype, speed.unit) == ("float", "km/h")
    soc = tree.node("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current")
    assert soc is not None and soc.max == 100.0
    assert tree.node("Vehicle.Body") is None  # a branch carries no value
    assert tree.units["km/h"].quantity == "velocity"
    assert len(tree.nodes) > 1000


def test_bundled_tree_is_what_vss_tools_makes_from_the_spec(tmp_path: Path) -> None:
    spec = require_corpus() / "vss" / "spec"
    tree_file, units_file = generate(spec, tmp_path, "6.0")
    assert tree_file.read_bytes() == DEFAULT_TREE.read_bytes()
    assert units_file.read_bytes() == DEFAULT_UNITS.read_bytes()


def test_a_vspec_tree_loads_through_vss_tools(tmp_path: Path) -> None:
    tree = load_tree(small_vspec_tree(tmp_path))
    assert set(tree.nodes) == {"Vehicle.Speed", "Vehicle.Gear"}
    assert tree.nodes["Vehicle.Speed"].unit == "m/s"
    assert tree.nodes["Vehicle.Gear"].allowed == ("P", "R", "N", "D")
    assert tree.units["m/s"].name == "meters per second"


def test_kuksa_mapping_file_is_a_tree_too() -> None:
    path = require_corpus() / "tesla_model3" / "kuksa_vss_4.2_dbc_mapping.json"
    tree = load_tree(path)
    node = tree.node("Vehicle.OBD.Speed")  # VSS 4.2 still has the OBD branch
    assert node is not None and node.unit == "km/h"


def test_unreadable_trees_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(VssTreeError, match="no VSS tree at"):
        load_tree(tmp_path / "missing.json")
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    with pytest.raises(VssTreeError, match="must be an object"):
        load_tree(not_object)
    empty = tmp_path / "empty.json"
    empty.write_text('{"Vehicle": {"type": "branch", "children": {}}}')
    with pytest.raises(VssTreeError, match="no VSS signal"):
        load_tree(empty)
    broken = tmp_path / "Broken.vspec"
    broken.write_text("Vehicle.Speed:\n  datatype: float\n  type: sensor\n")  # an orphan
    with pytest.raises(VssTreeError, match=r"Broken\.vspec"):
        load_tree(broken)

"""A small VSS tree in .vspec sources, as a user's own tree would be (tests of edge/vss)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["small_vspec_tree"]

UNITS_YAML = """\
km/h:
  definition: Velocity measured in kilometers per hours
  unit: kilometer per hour
  quantity: velocity
  allowed-datatypes: ['numeric']
m/s:
  definition: Speed measured in meters per second
  unit: meters per second
  quantity: velocity
  allowed-datatypes: ['numeric']
"""
QUANTITIES_YAML = """\
velocity:
  definition: Rate of change of position
"""
VSPEC = """\
Vehicle:
  type: branch
  description: High-level vehicle data.
Vehicle.Speed:
  datatype: float
  type: sensor
  unit: m/s
  description: Vehicle speed, in this test tree in metres per second.
Vehicle.Gear:
  datatype: string
  type: sensor
  allowed: ['P', 'R', 'N', 'D']
  description: Lever.
"""


def small_vspec_tree(folder: Path) -> Path:
    """A .vspec root with its units and quantities, as a user's custom tree would be."""
    (folder / "units.yaml").write_text(UNITS_YAML)
    (folder / "quantities.yaml").write_text(QUANTITIES_YAML)
    root = folder / "Tiny.vspec"
    root.write_text(VSPEC)
    return root

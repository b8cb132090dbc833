"""COVESA VSS names for DBC signals (issue 16): the VSS tree in use (:mod:`edge.vss.tree`),
Kuksa-format mapping files checked against it and the databases (:mod:`edge.vss.mapping`), and
the transforms they define (:mod:`edge.wire.transform`). docs/vss.md tells how to use them."""

from edge.vss.mapping import VssLink, VssMapping, VssMappingError, link_config
from edge.vss.tree import VssNode, VssTree, VssTreeError, default_tree, load_tree
from edge.wire.transform import Transform, TransformError, compile_spec, parse_math

__all__ = [
    "Transform",
    "TransformError",
    "VssLink",
    "VssMapping",
    "VssMappingError",
    "VssNode",
    "VssTree",
    "VssTreeError",
    "compile_spec",
    "default_tree",
    "link_config",
    "load_tree",
    "parse_math",
]

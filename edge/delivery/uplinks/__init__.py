"""The uplink registry: a name in the configuration (``uplink.type``) -> an :class:`Uplink` class.

Like python-can's ``BACKENDS``, the built-in table holds import *strings*, so an uplink's
dependencies (paho-mqtt, azure-iot-device) are imported only when that uplink is used. Third
parties add uplinks through the entry-point group ``can_telemetry.uplinks``::

    [project.entry-points."can_telemetry.uplinks"]
    kafka = "my_package.kafka:KafkaUplink"

Built-in names win over entry points of the same name.

An uplink is an :class:`~edge.delivery.uplinks.base.Uplink` with a ``kind`` (its registry name)
and an ``Options`` class: a frozen dataclass deriving from
:class:`~edge.config.uplinks.UplinkOptions` whose fields are its options (the built-ins' are
declared in :mod:`edge.config.uplinks`, whose ``BUILT_IN_OPTIONS`` has the names of
``BACKENDS``). The configuration reads the ``[uplink]`` table into it once, at load (errors
naming ``uplink.<key>``); ``from_options`` builds the uplink from it later (cheap, no network
I/O; connecting happens in ``send``, which may raise TransientUplinkError).
"""

from __future__ import annotations

import importlib

from edge.config.uplinks import ENTRY_POINT_GROUP, plugin_uplinks
from edge.delivery.uplinks.base import Uplink
from edge.errors import ConfigError

__all__ = ["BACKENDS", "ENTRY_POINT_GROUP", "available_uplinks", "uplink_class"]

#: Built-in uplinks: name -> (module, class name), imported on first use.
BACKENDS: dict[str, tuple[str, str]] = {
    "file": ("edge.delivery.uplinks.file", "FileUplink"),
    "mqtt": ("edge.delivery.uplinks.mqtt", "MqttUplink"),
    "azure-edge": ("edge.delivery.uplinks.azure", "AzureEdgeUplink"),
    "azure-device": ("edge.delivery.uplinks.azure", "AzureDeviceUplink"),
}

_FIELD = "uplink.type"


def _load(kind: str) -> object:
    if kind in BACKENDS:
        module_name, class_name = BACKENDS[kind]
        return getattr(importlib.import_module(module_name), class_name)
    plugin = plugin_uplinks().get(kind)
    if plugin is None:
        known = ", ".join(available_uplinks())
        raise ConfigError(_FIELD, f"unknown uplink {kind!r}; known: {known}")
    return plugin.load()


def available_uplinks() -> list[str]:
    """Names of every uplink that can be configured: built-ins and entry points, sorted."""
    return sorted({*BACKENDS, *plugin_uplinks()})


def uplink_class(kind: str) -> type[Uplink]:
    """The Uplink class registered as ``kind``, imported now.

    Raises ConfigError on ``uplink.type`` when the name is unknown (listing the known ones), when
    its module cannot be imported (e.g. a missing optional dependency), or when what is
    registered is not an Uplink.
    """
    try:
        loaded = _load(kind)
    except ConfigError:
        raise
    except Exception as exc:  # an uplink module failing to import must not start the module
        raise ConfigError(_FIELD, f"uplink {kind!r} cannot be loaded: {exc}") from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Uplink)):
        raise ConfigError(_FIELD, f"uplink {kind!r} is {loaded!r}, not an Uplink subclass")
    return loaded

"""What the Azure uplinks and the IoT Edge module's connection share of azure-iot-device: the one
classifier of its errors, a module client from the IoT Edge environment, and shutting a client
down.

The classifier (:func:`classify`) turns what the SDK raises into our exceptions
(:mod:`edge.errors`), so that the forwarder and the module decide on our classes only.

Creating a client from the IoT Edge environment (``environment=True``):

* ``OSError`` caused by a ``KeyError`` (neither the ``IOTEDGE_*`` variables nor
  ``EdgeHubConnectionString``), ``FileNotFoundError`` (the CA file of
  ``EdgeModuleCACertificateFile`` is missing), ``ValueError`` (a malformed connection string, an
  unreadable CA file, a key that cannot sign a token): PermanentUplinkError, they will not fix
  themselves;
* any other ``OSError`` (the IoT Edge workload API failed or cannot be reached):
  TransientUplinkError, it may come back.

Connecting and sending:

* ``CredentialError`` (CONNACK 4/5, refused credentials): PermanentUplinkError;
* ``ValueError`` (the SDK's size check: over IoT Hub's 256 KB): RejectedPayloadError, for that
  payload only;
* ``ClientError`` (``ConnectionFailedError``, ``ConnectionDroppedError``,
  ``NoConnectionError``, an untrusted certificate...), ``OperationCancelled``,
  ``OperationTimeout``: TransientUplinkError.

Our own :class:`~edge.errors.UplinkError` passes unchanged; anything else is returned unchanged
(a bug is not a network problem). Messages name the exception and its root cause
(:func:`describe`); the SDK's messages never quote a connection string.

The module (:mod:`edge.iotedge.connection`) and the ``azure-edge`` uplink both create their
clients with :func:`edge_module_client`. Before this module they had one copy each of the
environment rule, and the copies had drifted: the module called a missing CA file transient.
"""

from __future__ import annotations

import logging
from typing import Any

from azure.iot.device import IoTHubModuleClient
from azure.iot.device import exceptions as sdk

from edge.errors import (
    PermanentUplinkError,
    RejectedPayloadError,
    TransientUplinkError,
    UplinkError,
)

__all__ = ["classify", "describe", "edge_module_client", "shutdown_client"]

_log = logging.getLogger(__name__)


def describe(exc: BaseException) -> str:
    """``Error: text (RootCause: text)`` along the ``__cause__`` chain, for error messages."""
    text = f"{type(exc).__name__}: {exc}"
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not exc and str(root):
        text += f" ({type(root).__name__}: {root})"
    return text


def classify(exc: BaseException, *, environment: bool = False) -> BaseException:
    """Our exception for one azure-iot-device raised (see the table in the module docstring);
    anything unexpected is returned unchanged. ``environment``: ``exc`` was raised creating a
    client from the IoT Edge environment (where a ``ValueError`` is a bad setting, not a
    payload over the size limit)."""
    if isinstance(exc, UplinkError):
        return exc
    if environment:
        if not isinstance(exc, OSError | ValueError):
            return exc
        text = f"IoT Edge environment: {describe(exc)}"
        # Missing variables or files, malformed values: they will not fix themselves. A failing
        # call to the IoT Edge workload API (another OSError) may.
        if isinstance(exc, ValueError | FileNotFoundError) or isinstance(exc.__cause__, KeyError):
            return PermanentUplinkError(text)
        return TransientUplinkError(text)
    if isinstance(exc, sdk.CredentialError):
        return PermanentUplinkError(f"credentials refused: {describe(exc)}")
    if isinstance(exc, ValueError):  # the SDK's size check: over 256 KB
        return RejectedPayloadError(f"message refused: {describe(exc)}")
    if isinstance(exc, sdk.ClientError | sdk.OperationCancelled | sdk.OperationTimeout):
        return TransientUplinkError(describe(exc))
    return exc


def edge_module_client(**kwargs: Any) -> Any:
    """A new, unconnected ``IoTHubModuleClient`` from the IoT Edge environment (``IOTEDGE_*``
    variables and the workload API; outside IoT Edge ``EdgeHubConnectionString`` and
    ``EdgeModuleCACertificateFile``), ``kwargs`` passed to the SDK. Its errors are classified
    (:func:`classify` with ``environment=True``) and raised from the SDK's."""
    try:
        return IoTHubModuleClient.create_from_edge_environment(**kwargs)
    except (OSError, ValueError) as exc:
        raise classify(exc, environment=True) from exc


def shutdown_client(client: Any) -> None:
    """Shut an SDK client down for good; never raises.

    ``shutdown()`` starts with a disconnect, which raises when the transport is already half
    down; the pipeline is then still running (with its SAS token renewal alarm, which would
    reconnect it later), so try once more: the second disconnect finds it disconnected.
    """
    for _ in range(2):
        try:
            client.shutdown()
            return
        except Exception as exc:
            _log.debug("SDK client shutdown failed (%s: %s)", type(exc).__name__, exc)

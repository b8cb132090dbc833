"""edge.delivery.uplinks.azure_sdk: the one classifier of azure-iot-device's errors, shared by the
Azure uplinks and the IoT Edge module's connection.

Every environment case is raised by the real SDK (``create_from_edge_environment`` on real
variables and files). The connect/send cases are the SDK's own exception classes, constructed
here: each is also met end to end against a real broker in tests/delivery/uplinks/test_azure.py
(refused credentials, oversized message, untrusted hub, hub restart, black hole)."""

from __future__ import annotations

import base64
import gc
from pathlib import Path

import pytest
from azure.iot.device import exceptions as sdk

from edge.delivery.uplinks.azure_sdk import (
    classify,
    describe,
    edge_module_client,
    shutdown_client,
)
from edge.errors import (
    PermanentUplinkError,
    RejectedPayloadError,
    TransientUplinkError,
)
from tests.support.iothub import SDK_WARNINGS
from tests.support.mosquitto import TlsFiles

pytestmark = SDK_WARNINGS

KEY = base64.b64encode(b"a shared access key of 32 bytes!").decode()
MODULE = (
    "HostName=myhub.azure-devices.net;GatewayHostName=127.0.0.1;DeviceId=car1;"
    f"ModuleId=CanTelemetry;SharedAccessKey={KEY}"
)
EDGE_VARIABLES = (
    "IOTHUBHOSTNAME",
    "DEVICEID",
    "MODULEID",
    "GATEWAYHOSTNAME",
    "MODULEGENERATIONID",
    "WORKLOADURI",
    "APIVERSION",
)


@pytest.fixture
def no_edge(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No IoT Edge variable of either kind set."""
    for name in EDGE_VARIABLES:
        monkeypatch.delenv(f"IOTEDGE_{name}", raising=False)
    monkeypatch.delenv("EdgeHubConnectionString", raising=False)
    monkeypatch.delenv("EdgeModuleCACertificateFile", raising=False)
    return monkeypatch


def development(monkeypatch: pytest.MonkeyPatch, connection_string: str, ca_file: Path) -> None:
    monkeypatch.setenv("EdgeHubConnectionString", connection_string)
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(ca_file))


# -- creating a client from the IoT Edge environment -------------------------------------------


def test_no_environment_is_permanent(no_edge: pytest.MonkeyPatch) -> None:
    with pytest.raises(PermanentUplinkError, match="IoT Edge environment: OSError") as info:
        edge_module_client(connection_retry=False)
    assert isinstance(info.value.__cause__, OSError)
    assert isinstance(info.value.__cause__.__cause__, KeyError)  # the SDK's chain is kept


def test_missing_ca_file_is_permanent(no_edge: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The module's copy of the rule called this transient (retrying forever for a file that
    # will not appear); the uplink's called it permanent. The one classifier keeps the union.
    development(no_edge, MODULE, tmp_path / "absent.pem")
    with pytest.raises(PermanentUplinkError, match="FileNotFoundError") as info:
        edge_module_client(connection_retry=False)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_unreadable_ca_file_is_permanent(no_edge: pytest.MonkeyPatch, tmp_path: Path) -> None:
    development(no_edge, MODULE, tmp_path)  # a folder: the SDK's ValueError, from an OSError
    with pytest.raises(PermanentUplinkError, match="Invalid CA certificate file") as info:
        edge_module_client(connection_retry=False)
    assert isinstance(info.value.__cause__, ValueError)


def test_malformed_connection_string_is_permanent_and_not_quoted(
    no_edge: pytest.MonkeyPatch, tls_files: TlsFiles
) -> None:
    device_only = MODULE.replace("ModuleId=CanTelemetry;", "")  # a module needs its ModuleId
    development(no_edge, device_only, tls_files.ca_file)
    with pytest.raises(PermanentUplinkError, match="Invalid Connection String") as info:
        edge_module_client(connection_retry=False)
    assert KEY not in str(info.value)


# The SDK's HTTP client for the workload API leaves its unix socket to the garbage collector.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
def test_unreachable_workload_api_is_transient(no_edge: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The variables of a real IoT Edge container, with aziot-edged not (yet) listening.
    for name, value in {
        "IOTHUBHOSTNAME": "myhub.azure-devices.net",
        "DEVICEID": "car1",
        "MODULEID": "CanTelemetry",
        "GATEWAYHOSTNAME": "edgehub",
        "MODULEGENERATIONID": "1",
        "WORKLOADURI": f"unix://{tmp_path / 'workload.sock'}",
        "APIVERSION": "2019-01-30",
    }.items():
        no_edge.setenv(f"IOTEDGE_{name}", value)
    with pytest.raises(TransientUplinkError, match="IoT Edge environment") as info:
        edge_module_client(connection_retry=False)
    assert isinstance(info.value.__cause__, OSError)
    del info
    gc.collect()  # that socket goes now, under this test's warning filters


def test_a_valid_environment_gives_a_client_that_shuts_down_quietly(
    no_edge: pytest.MonkeyPatch, tls_files: TlsFiles
) -> None:
    development(no_edge, MODULE, tls_files.ca_file)
    client = edge_module_client(connection_retry=False, keep_alive=5)
    assert not client.connected
    shutdown_client(client)
    shutdown_client(client)  # a second shutdown never raises either


def test_environment_errors_of_other_kinds_are_not_ours() -> None:
    bug = TypeError("unsupported parameter")  # a wrong keyword: a bug, not the environment
    assert classify(bug, environment=True) is bug
    ours = TransientUplinkError("already classified")
    assert classify(ours, environment=True) is ours


# -- connecting and sending --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected", "text"),
    [
        (sdk.CredentialError("CONNACK 5"), PermanentUplinkError, "credentials refused"),
        (ValueError("Size of message can not exceed 256 KB."), RejectedPayloadError, "256 KB"),
        (sdk.ConnectionFailedError("refused"), TransientUplinkError, "ConnectionFailedError"),
        (sdk.ConnectionDroppedError("dropped"), TransientUplinkError, "ConnectionDroppedError"),
        (sdk.NoConnectionError("offline"), TransientUplinkError, "NoConnectionError"),
        (sdk.ClientError("certificate verify failed"), TransientUplinkError, "verify failed"),
        (sdk.OperationCancelled("cancelled"), TransientUplinkError, "OperationCancelled"),
        (sdk.OperationTimeout("timed out"), TransientUplinkError, "OperationTimeout"),
    ],
)
def test_sdk_errors(raised: Exception, expected: type[Exception], text: str) -> None:
    error = classify(raised)
    assert type(error) is expected
    assert text in str(error)


def test_our_errors_and_bugs_pass_unchanged() -> None:
    ours = PermanentUplinkError("already ours")
    assert classify(ours) is ours
    bug = RuntimeError("a bug")
    assert classify(bug) is bug


def test_describe_names_the_root_cause() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as root:
            raise sdk.ConnectionFailedError("connection failed") from root
    except sdk.ConnectionFailedError as exc:
        text = describe(exc)
    assert text == (
        "ConnectionFailedError: connection failed "
        "(ConnectionRefusedError: [Errno 111] Connection refused)"
    )
    assert describe(ValueError("plain")) == "ValueError: plain"

"""edge.iotedge.manifest: deployment.template.json + module.json -> a deployment manifest for
``az iot edge set-modules``, expanded as iotedgedev / VS Code do, and valid against the IoT Edge
deployment schema (../shared/schemas)."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edge.cli import main
from edge.iotedge.manifest import (
    CREATE_OPTIONS_CHUNK,
    ManifestError,
    expand_manifest,
    join_create_options,
    split_create_options,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deployment.template.json"
MODULE_JSON = ROOT / "modules" / "CanTelemetry" / "module.json"
SCHEMA = (
    Path(__file__).resolve().parents[3] / "shared" / "schemas" / "iotedge-deployment-schema.json"
)
ENV = {"CONTAINER_REGISTRY_ADDRESS": "myregistry.azurecr.io"}
PLATFORMS = ("amd64", "arm64v8", "arm32v7")

#: A route as an object, which $edgeHub schema versions 1.1 and later accept besides a string.
ROUTE_OBJECT = {
    "type": "object",
    "required": ["route"],
    "properties": {
        "route": {"type": "string"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9},
        "timeToLiveSecs": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": False,
}


def deployment_schema() -> dict[str, Any]:
    """The published schema (draft-07), with route objects allowed (../shared/schemas/README.md)."""
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} is not there (the shared schemas are not checked out)")
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    hub = schema["properties"]["modulesContent"]["properties"]["$edgeHub"]
    routes = hub["properties"]["properties.desired"]["properties"]["routes"]
    string = routes["patternProperties"]["^.+$"]
    routes["patternProperties"]["^.+$"] = {"anyOf": [string, ROUTE_OBJECT]}
    return schema


def expand(tmp_path: Path, platform: str = "amd64", **env: str) -> dict[str, Any]:
    output = expand_manifest(
        TEMPLATE,
        MODULE_JSON,
        platform,
        tmp_path / f"deployment.{platform}.json",
        env={**ENV, **env},
    )
    manifest: dict[str, Any] = json.loads(output.read_text())
    return manifest


def modules_of(manifest: dict[str, Any]) -> dict[str, Any]:
    agent = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    return {**agent["systemModules"], **agent["modules"]}


def template_modules() -> dict[str, Any]:
    return modules_of(json.loads(TEMPLATE.read_text()))


@pytest.mark.parametrize("platform", PLATFORMS)
def test_expanded_manifest_is_valid_for_every_platform(tmp_path: Path, platform: str) -> None:
    schema = deployment_schema()
    validator = jsonschema.validators.validator_for(schema)
    assert validator is jsonschema.Draft7Validator  # the schema's "$schema"
    validator.check_schema(schema)
    manifest = expand(tmp_path, platform)
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}"
        for e in validator(schema).iter_errors(manifest)
    ]
    assert errors == []
    module = modules_of(manifest)["CanTelemetry"]
    assert module["settings"]["image"] == f"myregistry.azurecr.io/can-telemetry:0.1.0-{platform}"
    assert "$schema-template" not in manifest
    assert "${" not in json.dumps(manifest)


def test_create_options_are_compact_chunks_that_reassemble(tmp_path: Path) -> None:
    manifest = expand(tmp_path)
    expected = template_modules()
    for name, module in modules_of(manifest).items():
        settings = module["settings"]
        chunks = [v for k, v in settings.items() if k.startswith("createOptions")]
        assert all(isinstance(c, str) and len(c) <= CREATE_OPTIONS_CHUNK for c in chunks)
        assert (
            json.loads(join_create_options(settings) or "{}")
            == (expected[name]["settings"]["createOptions"])
        ), name
    can = modules_of(manifest)["CanTelemetry"]["settings"]
    options = json.loads(join_create_options(can))
    assert options["HostConfig"]["NetworkMode"] == "host"
    assert options["NetworkingConfig"] == {"EndpointsConfig": {"host": {}}}
    assert "/var/lib/can-telemetry:/var/lib/can-telemetry" in options["HostConfig"]["Binds"]


def test_long_create_options_are_split_like_the_azure_tooling(tmp_path: Path) -> None:
    options = {"Env": [f"VARIABLE_{i}=value-{i}" for i in range(60)], "HostConfig": {"Binds": []}}
    chunks = split_create_options(options)
    assert len(chunks) > 1 and all(len(c) <= 512 for c in chunks)
    assert all(len(c) == 512 for c in chunks[:-1])
    settings = {
        "createOptions" if i == 0 else f"createOptions{i:02d}": c for i, c in enumerate(chunks)
    }
    assert json.loads(join_create_options(settings)) == options

    template = json.loads(TEMPLATE.read_text())
    modules = template["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    modules["CanTelemetry"]["settings"]["createOptions"] = options
    path = tmp_path / "long.template.json"
    path.write_text(json.dumps(template))
    out = expand_manifest(path, MODULE_JSON, "amd64", tmp_path / "out.json", env=ENV)
    settings = modules_of(json.loads(out.read_text()))["CanTelemetry"]["settings"]
    assert sorted(k for k in settings if k.startswith("createOptions")) == [
        "createOptions",
        *[f"createOptions{i:02d}" for i in range(1, len(chunks))],
    ]
    assert json.loads(join_create_options(settings)) == options

    modules["CanTelemetry"]["settings"]["createOptions"] = {"Env": ["X=" + "y" * 5000]}
    path.write_text(json.dumps(template))
    with pytest.raises(ManifestError, match="at most 4096 fit in 8 chunks"):
        expand_manifest(path, MODULE_JSON, "amd64", tmp_path / "out.json", env=ENV)


def test_unset_variable_and_unknown_platform_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"\$\{CONTAINER_REGISTRY_ADDRESS\} is used but"):
        expand_manifest(TEMPLATE, MODULE_JSON, "amd64", tmp_path / "x.json", env={})
    with pytest.raises(ManifestError, match=r"no platform 'riscv64'.*amd64, arm32v7, arm64v8"):
        expand(tmp_path, "riscv64")
    template = json.loads(TEMPLATE.read_text())
    modules = template["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    modules["Other"] = copy.deepcopy(modules["CanTelemetry"])
    modules["Other"]["settings"]["image"] = "${MODULES.Other}"
    path = tmp_path / "other.template.json"
    path.write_text(json.dumps(template))
    with pytest.raises(ManifestError, match=r"MODULES.Other\} names no module"):
        expand_manifest(path, MODULE_JSON, "amd64", tmp_path / "x.json", env=ENV)


def test_explicit_platform_placeholder(tmp_path: Path) -> None:
    template = json.loads(TEMPLATE.read_text())
    modules = template["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    modules["CanTelemetry"]["settings"]["image"] = "${MODULES.CanTelemetry.arm64v8}"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(template))
    out = expand_manifest(path, MODULE_JSON, "amd64", tmp_path / "o.json", env=ENV)
    image = modules_of(json.loads(out.read_text()))["CanTelemetry"]["settings"]["image"]
    assert image == "myregistry.azurecr.io/can-telemetry:0.1.0-arm64v8"


def test_the_template_wires_the_module_to_edgehub() -> None:
    template = json.loads(TEMPLATE.read_text())
    content = template["modulesContent"]
    agent = content["$edgeAgent"]["properties.desired"]
    system = agent["systemModules"]
    assert system["edgeAgent"]["settings"]["image"] == "mcr.microsoft.com/azureiotedge-agent:1.5"
    assert system["edgeHub"]["settings"]["image"] == "mcr.microsoft.com/azureiotedge-hub:1.5"
    hub_options = system["edgeHub"]["settings"]["createOptions"]["HostConfig"]
    storage = system["edgeHub"]["env"]["storageFolder"]["value"]
    assert any(bind.endswith(f":{storage}") for bind in hub_options["Binds"])
    assert set(hub_options["PortBindings"]) == {"5671/tcp", "8883/tcp", "443/tcp"}
    module = agent["modules"]["CanTelemetry"]
    assert module["restartPolicy"] == "always" and module["status"] == "running"
    assert module["settings"]["image"] == "${MODULES.CanTelemetry}"
    hub = content["$edgeHub"]["properties.desired"]
    assert hub["schemaVersion"] >= "1.1"  # routes with priority and TTL
    output = content["CanTelemetry"]["properties.desired"]["config"]["uplink"]["output"]
    (route,) = hub["routes"].values()
    assert route["route"] == f"FROM /messages/modules/CanTelemetry/outputs/{output} INTO $upstream"
    assert 0 <= route["priority"] <= 9
    assert route["timeToLiveSecs"] == hub["storeAndForwardConfiguration"]["timeToLiveSecs"]
    spool_ttl = content["CanTelemetry"]["properties.desired"]["config"]["spool"]["ttl"]
    assert route["timeToLiveSecs"] == spool_ttl


def test_module_json_agrees_with_the_dockerfile_and_pyproject() -> None:
    module = json.loads(MODULE_JSON.read_text())
    image = module["image"]
    assert module["$schema-version"] == "0.0.1"
    assert image["repository"] == "${CONTAINER_REGISTRY_ADDRESS}/can-telemetry"
    assert set(image["tag"]["platforms"]) == set(PLATFORMS)
    for dockerfile in image["tag"]["platforms"].values():
        assert (MODULE_JSON.parent / dockerfile).resolve() == ROOT / "Dockerfile"
    assert (MODULE_JSON.parent / image["contextPath"]).resolve() == ROOT
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert image["tag"]["version"] == project["version"]


def test_the_cli_manifest_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONTAINER_REGISTRY_ADDRESS", "localhost:5000")
    output = tmp_path / "config" / "deployment.arm64v8.json"
    status = main(
        [
            "manifest",
            "--template",
            str(TEMPLATE),
            "--module",
            str(MODULE_JSON),
            "--platform",
            "arm64v8",
            "--output",
            str(output),
        ]
    )
    assert status == 0
    assert capsys.readouterr().out.strip() == str(output)
    image = modules_of(json.loads(output.read_text()))["CanTelemetry"]["settings"]["image"]
    assert image == "localhost:5000/can-telemetry:0.1.0-arm64v8"
    monkeypatch.delenv("CONTAINER_REGISTRY_ADDRESS")
    assert (
        main(
            [
                "manifest",
                "--template",
                str(TEMPLATE),
                "--module",
                str(MODULE_JSON),
                "--output",
                str(output),
            ]
        )
        == 1
    )
    assert "CONTAINER_REGISTRY_ADDRESS is not set" in capsys.readouterr().err

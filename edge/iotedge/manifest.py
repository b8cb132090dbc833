"""Expanding ``deployment.template.json`` into a deployment manifest for IoT Edge, the way the
Azure tooling (iotedgedev ``genconfig``, the VS Code IoT Edge extension) does, without them:

1. ``module.json`` of each module is read; ``${VAR}`` in its values are replaced from the
   environment (``CONTAINER_REGISTRY_ADDRESS``); a variable that is not set is an error naming it.
2. ``${MODULES.<name>}`` in the template becomes ``<repository>:<version>-<platform>`` from that
   module's ``module.json`` (``${MODULES.<name>.<platform>}`` picks the platform explicitly).
   ``<name>`` is the folder of ``module.json`` (``modules/CanTelemetry/module.json``), as in the
   tooling.
3. ``${VAR}`` elsewhere in the template is replaced from the environment. Only the braced form is
   expanded: ``$upstream`` and ``$edgeHub`` are part of the manifest language, not variables.
4. Every ``createOptions`` given as an object is serialised to compact JSON and split into chunks
   of at most :data:`CREATE_OPTIONS_CHUNK` characters: ``createOptions``, ``createOptions01``,
   ``createOptions02``, ... IoT Hub limits a twin string value to 512 bytes; edgeAgent joins the
   chunks in name order. At most :data:`CREATE_OPTIONS_MAX_CHUNKS` chunks (4 KB), the tooling's
   limit. The JSON is ASCII (``ensure_ascii``), so characters and bytes agree.
5. ``$schema-template`` is dropped and the result written for
   ``az iot edge set-modules --content <output>``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge.errors import TelemetryError

__all__ = [
    "CREATE_OPTIONS_CHUNK",
    "CREATE_OPTIONS_MAX_CHUNKS",
    "ManifestError",
    "ModuleImage",
    "expand_manifest",
    "join_create_options",
    "split_create_options",
]

#: Longest createOptions chunk (IoT Hub's limit on a twin string value).
CREATE_OPTIONS_CHUNK = 512
#: Most chunks the Azure tooling writes (createOptions .. createOptions07: 4 KB).
CREATE_OPTIONS_MAX_CHUNKS = 8

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_MODULES = "MODULES."


class ManifestError(TelemetryError):
    """The template or a module.json cannot be expanded (the message says which and why)."""


class ModuleImage:
    """What ``module.json`` says about a module's image."""

    def __init__(self, name: str, repository: str, version: str, platforms: Mapping[str, str]):
        self.name = name
        self.repository = repository
        self.version = version
        self.platforms = dict(platforms)

    def image(self, platform: str) -> str:
        """``<repository>:<version>-<platform>``, the tag iotedgedev and VS Code build."""
        if platform not in self.platforms:
            known = ", ".join(sorted(self.platforms))
            raise ManifestError(
                f"module {self.name}: no platform {platform!r} in module.json (known: {known})"
            )
        return f"{self.repository}:{self.version}-{platform}"

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Mapping[str, str]) -> ModuleImage:
        """Read ``module.json`` at ``path``, expanding ``${VAR}`` from ``env``."""
        file = Path(path)
        data = _expand(_read_json(file), lambda name: _env_value(name, env, file), file)
        image = data.get("image") if isinstance(data, dict) else None
        if not isinstance(image, dict):
            raise ManifestError(f"{file}: no 'image' object")
        tag = image.get("tag")
        repository = image.get("repository")
        if not isinstance(repository, str) or not repository:
            raise ManifestError(f"{file}: image.repository must be a non-empty string")
        if not isinstance(tag, dict) or not isinstance(tag.get("version"), str):
            raise ManifestError(f"{file}: image.tag.version must be a string")
        platforms = tag.get("platforms")
        if not isinstance(platforms, dict) or not platforms:
            raise ManifestError(f"{file}: image.tag.platforms must name at least one platform")
        return cls(file.resolve().parent.name, repository, tag["version"], platforms)


def expand_manifest(
    template: str | os.PathLike[str],
    module_json: str | os.PathLike[str],
    platform: str,
    output: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Expand ``template`` for ``platform`` with the image described by ``module_json`` and write
    the deployment manifest to ``output`` (folders created); return its path.

    ``env`` defaults to the process environment. Raises ManifestError with the file and the
    reason: an unset variable, an unknown module or platform, createOptions over 4 KB.
    """
    variables = dict(os.environ if env is None else env)
    template_file = Path(template)
    module = ModuleImage.load(module_json, variables)
    images = {module.name: module}

    def lookup(name: str) -> str:
        if name.startswith(_MODULES):
            return _module_image(name[len(_MODULES) :], images, platform, template_file)
        return _env_value(name, variables, template_file)

    manifest = _expand(_read_json(template_file), lookup, template_file)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("modulesContent"), dict):
        raise ManifestError(f"{template_file}: no 'modulesContent' object")
    manifest.pop("$schema-template", None)
    agent = manifest["modulesContent"].get("$edgeAgent", {}).get("properties.desired", {})
    for group in ("systemModules", "modules"):
        for name, module_spec in (agent.get(group) or {}).items():
            settings = module_spec.get("settings") if isinstance(module_spec, dict) else None
            if isinstance(settings, dict) and "createOptions" in settings:
                _chunk_settings(settings, f"{template_file}: module {name}")
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return target


def split_create_options(options: Mapping[str, Any] | str) -> list[str]:
    """Compact JSON of ``options`` in chunks of at most :data:`CREATE_OPTIONS_CHUNK` characters."""
    text = (
        options
        if isinstance(options, str)
        else json.dumps(options, separators=(",", ":"), ensure_ascii=True)
    )
    return [text[i : i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)]


def join_create_options(settings: Mapping[str, Any]) -> str:
    """The createOptions string edgeAgent reassembles from ``createOptions``, ``createOptions01``,
    ... (in name order)."""
    parts = [str(settings["createOptions"])]
    index = 1
    while f"createOptions{index:02d}" in settings:
        parts.append(str(settings[f"createOptions{index:02d}"]))
        index += 1
    return "".join(parts)


def _chunk_settings(settings: dict[str, Any], where: str) -> None:
    options = settings["createOptions"]
    if not isinstance(options, dict | str):
        raise ManifestError(f"{where}: createOptions must be an object or a JSON string")
    if isinstance(options, str):
        try:
            json.loads(options or "{}")
        except ValueError as exc:
            raise ManifestError(f"{where}: createOptions is not valid JSON: {exc}") from None
    chunks = split_create_options(options) or [""]
    if len(chunks) > CREATE_OPTIONS_MAX_CHUNKS:
        raise ManifestError(
            f"{where}: createOptions is {sum(map(len, chunks))} characters; at most "
            f"{CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_MAX_CHUNKS} fit in "
            f"{CREATE_OPTIONS_MAX_CHUNKS} chunks"
        )
    for key in [k for k in settings if k.startswith("createOptions")]:
        del settings[key]
    for index, chunk in enumerate(chunks):
        settings["createOptions" if index == 0 else f"createOptions{index:02d}"] = chunk


def _module_image(
    reference: str, images: Mapping[str, ModuleImage], platform: str, template: Path
) -> str:
    name, _, explicit = reference.partition(".")
    module = images.get(name)
    if module is None:
        known = ", ".join(sorted(images))
        raise ManifestError(
            f"{template}: ${{MODULES.{reference}}} names no module with a module.json "
            f"(known: {known})"
        )
    return module.image(explicit or platform)


def _env_value(name: str, env: Mapping[str, str], file: Path) -> str:
    value = env.get(name)
    if value is None:
        raise ManifestError(f"{file}: ${{{name}}} is used but the variable {name} is not set")
    return value


def _expand(value: Any, lookup: Callable[[str], str], file: Path) -> Any:
    """``value`` with ``${NAME}`` replaced by ``lookup(NAME)`` in every string (keys included)."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: lookup(m.group(1)), value)
    if isinstance(value, list):
        return [_expand(v, lookup, file) for v in value]
    if isinstance(value, dict):
        return {_expand(k, lookup, file): _expand(v, lookup, file) for k, v in value.items()}
    return value


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read {file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ManifestError(f"{file} is not valid JSON: {exc}") from exc

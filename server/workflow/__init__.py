"""Workflow formats: the UI (litegraph) format, the API (prompt) format, and images that embed them.

    result = ui_to_api(ui_workflow, registry)        # ConversionResult(prompt, warnings)
    loaded = load_workflow_file("shared.png")        # LoadedWorkflow(ui=..., api=..., source="png")
    prompt = to_api(loaded, registry)                # the API prompt, whatever came in

The conversion itself lives in :mod:`server.workflow.convert` (graph flattening) and
:mod:`server.workflow.widgets` (widget values by name); image metadata in :mod:`server.workflow.media`.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from loom.nodes.kernel.schema import NodeRegistry
from loom.server.workflow.convert import ConversionResult, Converter, WorkflowError
from loom.server.workflow.media import PNG_SIGNATURE, embed_png_metadata, is_webp, read_image_metadata

__all__ = [
    "ConversionResult", "LoadedWorkflow", "WorkflowError", "embed_png_metadata", "is_api_format",
    "is_ui_format", "load_workflow_file", "parse_workflow_json", "read_image_metadata", "to_api", "ui_to_api",
]


@dataclass
class LoadedWorkflow:
    """What a workflow file held: the UI graph and/or the API prompt, and the kind of file (json/png/webp/image)."""

    ui: dict[str, Any] | None
    api: dict[str, Any] | None
    source: str
    path: str | None = None


def is_api_format(data: Any) -> bool:
    """``{id: {"class_type": str, "inputs": {...}}}`` with at least one node."""
    if not isinstance(data, dict) or not data:
        return False
    return all(isinstance(node, dict) and isinstance(node.get("class_type"), str)
               and isinstance(node.get("inputs", {}), dict) for node in data.values())


def is_ui_format(data: Any) -> bool:
    """A litegraph graph: a ``nodes`` list of node objects (``links`` a list when present).

    Stray non-object entries do not disqualify a graph (the converter skips them with a warning).
    """
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        return False
    if "links" in data and not isinstance(data["links"], (list, type(None))):
        return False
    nodes = data["nodes"]
    return not nodes or any(isinstance(node, dict) for node in nodes)


def ui_to_api(workflow: dict[str, Any], registry: NodeRegistry, *, now: datetime | None = None) -> ConversionResult:
    """Convert a UI workflow to the API prompt the editor would queue for it.

    ``now`` is the time used for ``%date:...%`` in output file names (default: the current time).
    Raises :class:`WorkflowError` when the JSON is not a UI workflow, or names every node whose type
    the registry does not know (muted and bypassed nodes may be unknown: they never run).
    """
    if not is_ui_format(workflow):
        raise WorkflowError(f"not a workflow: {_shape(workflow)}")
    return Converter(workflow, registry, now).convert()


def to_api(workflow: "LoadedWorkflow | dict[str, Any]", registry: NodeRegistry) -> dict[str, Any]:
    """The API prompt for a loaded file or a parsed JSON document in either format."""
    if isinstance(workflow, LoadedWorkflow):
        if workflow.ui is not None:
            try:
                return ui_to_api(workflow.ui, registry).prompt
            except WorkflowError:
                # an image also carries the prompt that actually ran: it needs none of the editor-only
                # nodes (custom reroutes, widgets...) that may have made the graph unconvertible here
                if workflow.api is None:
                    raise
        if workflow.api is not None:
            return copy.deepcopy(workflow.api)
        raise WorkflowError(f"{workflow.path or 'file'}: holds no workflow")
    if is_api_format(workflow):
        return copy.deepcopy(workflow)
    if is_ui_format(workflow):
        return ui_to_api(workflow, registry).prompt
    raise WorkflowError(f"not a workflow: {_shape(workflow)}")


def parse_workflow_json(document: Any, where: str = "JSON") -> LoadedWorkflow:
    """Classify a parsed JSON document as a UI or API workflow, or raise "not a workflow".

    Also accepted: a saved ``POST /prompt`` body (``{"prompt": api, "extra_data": {"extra_pnginfo":
    {"workflow": ui}}}``) and a ``{"workflow": ui}`` wrapper.
    """
    if is_ui_format(document):
        return LoadedWorkflow(ui=document, api=None, source="json")
    if is_api_format(document):
        return LoadedWorkflow(ui=None, api=document, source="json")
    if isinstance(document, dict):
        extra = document.get("extra_data") if isinstance(document.get("extra_data"), dict) else {}
        pnginfo = extra.get("extra_pnginfo") if isinstance(extra.get("extra_pnginfo"), dict) else {}
        ui = document.get("workflow", pnginfo.get("workflow"))
        api = document.get("prompt")
        ui, api = (ui if is_ui_format(ui) else None), (api if is_api_format(api) else None)
        if ui is not None or api is not None:
            return LoadedWorkflow(ui=ui, api=api, source="json")
    raise WorkflowError(f"{where}: not a workflow: {_shape(document)}")


def load_workflow_file(path: str | Path) -> LoadedWorkflow:
    """Read a UI JSON, API JSON, or an image with an embedded workflow (``workflow`` preferred to ``prompt``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WorkflowError(f"{path}: cannot read: {error.strerror or error}") from None
    if data.startswith(PNG_SIGNATURE) or is_webp(data):
        return _load_image(data, path)
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as error:
        if read_image_metadata(data):  # an image of another kind with text metadata (JPEG, AVIF, ...)
            return _load_image(data, path)
        raise WorkflowError(f"{path}: neither JSON nor an image with a workflow ({error})") from None
    loaded = parse_workflow_json(document, str(path))
    loaded.path = str(path)
    return loaded


def _load_image(data: bytes, path: Path) -> LoadedWorkflow:
    kind = "png" if data.startswith(PNG_SIGNATURE) else "webp" if is_webp(data) else "image"
    metadata = read_image_metadata(data)
    ui = _embedded_json(metadata.get("workflow"), is_ui_format)
    api = _embedded_json(metadata.get("prompt"), is_api_format)
    if ui is None and api is None:
        found = f" (text keys: {', '.join(sorted(metadata))})" if metadata else ""
        raise WorkflowError(f"{path}: no workflow in this image{found}")
    return LoadedWorkflow(ui=ui, api=api, source=kind, path=str(path))


def _embedded_json(text: str | None, accepts) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if accepts(document) else None


def _shape(data: Any) -> str:
    if isinstance(data, dict):
        keys = ", ".join(list(map(str, data))[:6]) or "no keys"
        return f"an object with {keys}"
    return f"a JSON {type(data).__name__}"

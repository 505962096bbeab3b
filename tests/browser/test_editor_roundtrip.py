"""Every UI workflow fixture in the repository loads, renders and saves back without losing fields:
groups, reroutes, subgraphs, muted/bypassed nodes, primitives, converted widgets and unknown keys."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
FIXTURES = sorted(p for folder in (REPO / "tests" / "fixtures" / "workflows", REPO / "workflows",
                                   REPO / "tests" / "browser" / "fixtures")
                  for p in folder.glob("*.json") if not p.name.endswith(".api.json"))


def missing_fields(original, saved, path="") -> list[str]:
    """Paths of keys in ``original`` that ``saved`` lacks (values may differ: order, sizes, ids)."""
    if isinstance(original, dict):
        if isinstance(saved, list) and all(k.isdigit() for k in original):
            return []  # an old {"0": x, "1": y} vector is written as [x, y]
        if not isinstance(saved, dict):
            return [path or "/"]
        return [m for key, value in original.items()
                for m in ([f"{path}/{key}"] if key not in saved else missing_fields(value, saved[key], f"{path}/{key}"))]
    return []


def test_every_workflow_fixture_round_trips(editor):
    assert FIXTURES
    for path in FIXTURES:
        original = json.loads(path.read_text())
        if not isinstance(original, dict) or "nodes" not in original:
            continue
        editor.js("(w) => loom.load(w)", original)
        editor.frame()
        assert editor.js("loom.renderStats().frames") > 0
        saved = editor.workflow()
        assert missing_fields({k: v for k, v in original.items() if k not in ("nodes", "state")}, saved) == [], path.name
        by_id = {n["id"]: n for n in saved["nodes"]}
        for node in original["nodes"]:
            assert node["id"] in by_id, (path.name, node["id"])
            lost = missing_fields(node, by_id[node["id"]])
            assert lost == [], (path.name, node["id"], lost)
            assert by_id[node["id"]].get("mode", 0) == node.get("mode", 0)
        assert saved["groups"] == original.get("groups", [])
        assert saved.get("definitions") == original.get("definitions")


def test_features_fixture_converts_with_primitive_reroute_bypass_and_mute(editor):
    original = json.loads((REPO / "tests" / "browser" / "fixtures" / "comfy_features.json").read_text())
    editor.js("(w) => loom.load(w)", original)
    prompt = editor.page.evaluate("async () => (await loom.editor.api.convert(loom.serialize())).prompt")
    assert prompt["1"]["inputs"]["width"] == 96  # from the PrimitiveNode
    assert prompt["6"]["inputs"]["images"] == ["1", 0]  # through the reroute and the bypassed invert
    assert not {"2", "3", "4", "5", "7"} & set(prompt)  # primitive, reroute, bypassed, muted, note

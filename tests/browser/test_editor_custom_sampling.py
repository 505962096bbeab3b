"""The editor with ComfyUI's custom-sampling nodes: their NOISE/GUIDER/SAMPLER/SIGMAS sockets are drawn in
their own colours, type-checked, and a dropped API prompt (the shared conformance case) becomes a graph with
those links; the UI workflow shaped like ComfyUI's SamplerCustomAdvanced example queues as the same prompt
the server's converter makes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "tests" / "fixtures" / "workflows" / "sampler_custom_advanced.json"
NEW_TYPES = ("NOISE", "GUIDER", "SAMPLER", "SIGMAS")


def test_new_socket_types_have_their_colours_and_link_rules(editor):
    got = editor.js("""async (types) => { const m = await import('/graph/types.js');
        return {colours: types.map((t) => m.typeColor(t)), known: types.map((t) => Boolean(m.TYPE_COLORS[t])),
                same: types.map((t) => m.isValidConnection(t, t)),
                crossed: m.isValidConnection('NOISE', 'GUIDER') || m.isValidConnection('SIGMAS', 'LATENT')}; }""",
                    list(NEW_TYPES))
    assert all(got["known"]) and len(set(got["colours"])) == len(NEW_TYPES)
    assert all(got["same"]) and got["crossed"] is False


def test_sockets_of_sampler_custom_advanced_take_only_their_own_types(editor):
    got = editor.js("""() => {
        loom.clear();
        const noise = loom.editor.addNode('RandomNoise', [0, 0]);
        const sampler = loom.editor.addNode('KSamplerSelect', [0, 200]);
        const custom = loom.editor.addNode('SamplerCustomAdvanced', [400, 0]);
        const slot = (name) => custom.inputs.findIndex((i) => i.name === name);
        return {inputs: custom.inputs.map((i) => [i.name, i.type]), outputs: custom.outputs.map((o) => [o.name, o.type]),
                noiseOk: loom.graph.canConnect(noise, 0, custom, slot('noise')),
                noiseIntoGuider: loom.graph.canConnect(noise, 0, custom, slot('guider')),
                samplerOk: loom.graph.canConnect(sampler, 0, custom, slot('sampler'))}; }""")
    assert got["inputs"] == [["noise", "NOISE"], ["guider", "GUIDER"], ["sampler", "SAMPLER"], ["sigmas", "SIGMAS"],
                             ["latent_image", "LATENT"]]
    assert got["outputs"] == [["output", "LATENT"], ["denoised_output", "LATENT"]]
    assert got["noiseOk"] is True and got["noiseIntoGuider"] is False and got["samplerOk"] is True


def test_dropped_api_prompt_of_the_conformance_case_builds_the_graph(editor, conformance_dir):
    prompt = json.loads((conformance_dir / "cases" / "custom_advanced_cfgguider_karras.json").read_text())
    editor.js("loom.clear()")
    editor.drop_file("workflow_api.json", json.dumps(prompt).encode(), "application/json")
    editor.page.wait_for_function(f"loom.nodes().length === {len(prompt)}")
    nodes = {n["id"]: n for n in editor.js("loom.nodes()")}
    assert nodes[43]["widgets"] == {"steps": 8, "sigma_max": 14.614642, "sigma_min": 0.0291675, "rho": 7.0}
    assert nodes[41]["widgets"]["cfg"] == 6.0 and nodes[42]["widgets"]["sampler_name"] == "dpmpp_2m"
    assert nodes[40]["widgets"]["noise_seed"] == 314
    types = {(l["origin_id"], l["target_id"]): l["type"] for l in editor.js("loom.links()")}
    assert types[(40, 5)] == "NOISE" and types[(41, 5)] == "GUIDER" and types[(42, 5)] == "SAMPLER"
    assert types[(43, 5)] == "SIGMAS"


def test_loaded_ui_workflow_queues_the_servers_prompt(editor, loom_server):
    workflow = json.loads(WORKFLOW.read_text())
    assert editor.js("(w) => loom.load(w)", workflow) == []
    saved = editor.workflow()
    converted = editor.js("""async (w) => { const r = await fetch('/api/workflow/convert', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(w)}); return r.json(); }""", saved)
    prompt = converted.get("prompt", converted)
    assert prompt["13"]["class_type"] == "SamplerCustomAdvanced"
    assert prompt["13"]["inputs"]["sigmas"] == ["17", 0] and prompt["26"]["inputs"]["samples"] == ["13", 1]
    assert prompt["17"]["inputs"]["scheduler"] == "karras" and prompt["25"]["inputs"]["noise_seed"] == 314

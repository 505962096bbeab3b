"""The acceptance path: build the text-to-image graph on an empty canvas with the mouse only, queue it with
Ctrl+Enter, and see the generated image in the SaveImage node. Also takes the README screenshots."""
from __future__ import annotations

import pytest

from loom.nodes.kernel.folders import DEMO_CHECKPOINT
from tests.browser.conftest import screenshot_path
from tools import demo_scenes

pytestmark = pytest.mark.browser



def test_build_txt2img_with_the_mouse_and_run_it(editor, loom_server, tmp_path):
    if not loom_server.checkpoint:
        pytest.fail("tests/fixtures_checkpoints.py is missing: the tiny checkpoint cannot be built")
    page = editor.page
    # clear the canvas through its context menu, zoom out a little with the wheel
    editor.mouse.click(*editor.point("emptyPoint"), button="right")
    page.click('.context-menu .menu-item[data-label="Clear canvas"]')
    editor.mouse.move(2, 42)
    editor.mouse.wheel(0, 150)
    editor.frame()
    assert editor.js("loom.nodes()") == []

    loader = editor.add_node_by_search("checkpoint", (40, 430), "CheckpointLoaderSimple")
    positive = editor.add_node_by_search("clip text", (340, 80), "CLIPTextEncode")
    negative = editor.add_node_by_search("cliptextencode", (340, 330), "CLIPTextEncode")
    latent = editor.add_node_by_search("empty latent", (340, 580), "EmptyLatentImage")
    sampler = editor.add_node_by_search("ksampler", (760, 80), "KSampler")
    decode = editor.add_node_by_search("vae decode", (1060, 80), "VAEDecode")
    save = editor.add_node_by_search("save image", (1060, 250), "SaveImage")

    editor.connect(loader, "MODEL", sampler, "model")
    editor.connect(loader, "CLIP", positive, "clip")
    editor.connect(loader, "CLIP", negative, "clip")
    editor.connect(positive, "CONDITIONING", sampler, "positive")
    editor.connect(negative, "CONDITIONING", sampler, "negative")
    editor.connect(latent, "LATENT", sampler, "latent_image")
    editor.connect(sampler, "LATENT", decode, "samples")
    editor.connect(loader, "VAE", decode, "vae")
    editor.connect(decode, "IMAGE", save, "images")
    assert len(editor.js("loom.links()")) == 9

    editor.choose_combo(loader, "ckpt_name", loom_server.checkpoint[:6], loom_server.checkpoint)
    for node, text in ((positive, "a lighthouse on a cliff at dawn"), (negative, "blurry")):
        editor.click(editor.point("widgetPoint", node, "text"))
        page.wait_for_selector(".overlay-textarea")
        editor.keyboard.type(text)
        editor.click((700, 790))
    editor.type_into_widget(latent, "width", "64")
    editor.type_into_widget(latent, "height", "64")
    editor.type_into_widget(sampler, "steps", "2")
    editor.type_into_widget(sampler, "seed", "42")
    editor.choose_combo(sampler, "control_after_generate", "fix", "fixed")
    values = {n["id"]: n["widgets"] for n in editor.js("loom.nodes()")}
    assert values[positive]["text"] == "a lighthouse on a cliff at dawn"
    assert (values[latent]["width"], values[latent]["height"], values[sampler]["steps"]) == (64, 64, 2)

    editor.click((700, 790))
    editor.keyboard.press("Control+Enter")
    page.wait_for_function(f"loom.nodeState({save}).images.length > 0 && loom.nodeState({save}).images[0].loaded",
                           timeout=150000)
    image = editor.js(f"loom.nodeState({save})")["images"][0]
    assert (image["width"], image["height"]) == (64, 64)
    assert editor.js(f"loom.nodeState({sampler})")["error"] is None
    editor.frame()
    page.screenshot(path=str(screenshot_path("editor-run.png", tmp_path)))


def test_screenshot_of_the_default_workflow(editor, loom_server, tmp_path):
    """New workflow = the default txt2img graph on the demo model Loom ships; it runs exactly as it is and
    shows a picture of its caption (the README's screenshot)."""
    editor.js("loom.newWorkflow()")
    editor.page.wait_for_function("loom.nodes().length === 7")
    nodes = editor.js("loom.nodes()")
    assert all(editor.js(f"loom.defs.get('{n['type']}') !== null") for n in nodes)
    assert next(n for n in nodes if n["type"] == "CheckpointLoaderSimple")["widgets"]["ckpt_name"] == DEMO_CHECKPOINT
    editor.js("""() => { const sampler = loom.graph.nodes.find(n => n.type === 'KSampler');
        sampler.widget('seed').value = 7; sampler.widget('control_after_generate').value = 'fixed'; }""")
    save = next(n["id"] for n in nodes if n["type"] == "SaveImage")
    editor.page.click("#btn-queue")
    editor.page.wait_for_function(f"loom.nodeState({save}).images.length > 0 && loom.nodeState({save}).images[0].loaded",
                                  timeout=150000)
    image = editor.js(f"loom.nodeState({save})")["images"][0]
    caption = next(n for n in editor.js("loom.nodes()") if n["type"] == "CLIPTextEncode"
                   and n["widgets"]["text"])["widgets"]["text"]
    saved = sorted((loom_server.base_dir / "output").glob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
    from PIL import Image as PILImage
    assert (image["width"], image["height"]) == PILImage.open(saved).size == (demo_scenes.SIZE, demo_scenes.SIZE)
    assert demo_scenes.check(PILImage.open(saved), caption).ok, caption
    editor.page.evaluate("document.querySelectorAll('.toast').forEach(t => t.remove())")
    editor.keyboard.press(".")
    editor.frame()
    path = screenshot_path("editor.png", tmp_path)
    editor.page.screenshot(path=str(path))
    from PIL import Image
    with Image.open(path) as shot:
        colours = shot.convert("RGB").resize((140, 82)).getcolors(140 * 82)
    assert colours and len(colours) > 20  # nodes, links, text and the image were drawn, not a blank canvas

"""The model and node libraries of the side panel in real Chromium: model files per folder with size and the
family the loaders detect (cached by file fingerprint, refreshed on demand), a checkpoint dragged onto the
canvas becoming a CheckpointLoaderSimple with that file; the node categories as a tree with search, the
/object_info descriptions as tooltips, and nodes dragged onto the canvas."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.browser.conftest import screenshot_path

pytestmark = pytest.mark.browser


def open_tab(editor, tab: str, selector: str) -> None:
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("q")
    editor.page.locator(f'.sidebar button[data-tab="{tab}"]').click()
    editor.page.wait_for_selector(selector)


def listing(editor, folder: str, refresh: bool = False) -> dict[str, dict]:
    text = editor.page.request.get(f"{editor.url}/api/model_library/{folder}{'?refresh=1' if refresh else ''}").text()
    return {f["name"]: f for f in json.loads(text)["files"]}


def added(editor, before: set[int]) -> list[dict]:
    return [n for n in editor.js("loom.nodes()") if n["id"] not in before]


def test_dragging_a_checkpoint_from_the_model_library_adds_its_loader(editor, loom_server, tmp_path):
    if not loom_server.checkpoint:
        pytest.fail("tests/fixtures_checkpoints.py is missing: the tiny checkpoint cannot be built")
    folder = loom_server.base_dir / "models" / "checkpoints"
    broken = folder / "zz-not-a-model.safetensors"
    copy = folder / "zz-second-sd1.safetensors"
    try:
        broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        # the route: size and family from the loaders' detection; a file it cannot read is listed without one
        files = listing(editor, "checkpoints")
        tiny = files[loom_server.checkpoint]
        assert tiny["family"] == "SD1.x" and tiny["size"] == (folder / loom_server.checkpoint).stat().st_size
        assert files["zz-not-a-model.safetensors"]["family"] is None and files["zz-not-a-model.safetensors"]["detail"]
        counts = {c["folder"]: c["count"] for c in json.loads(editor.page.request.get(f"{editor.url}/api/model_library").text())}
        assert counts["checkpoints"] >= 2 and set(counts) >= {"checkpoints", "loras", "vae", "controlnet"}
        assert editor.page.request.get(f"{editor.url}/api/model_library/nope").status == 404
        # cached by fingerprint: the same name with new content (new size/mtime) is detected again
        shutil.copyfile(folder / loom_server.checkpoint, broken)
        assert listing(editor, "checkpoints")["zz-not-a-model.safetensors"]["family"] == "SD1.x"
        broken.write_bytes(b"not a safetensors file at all")
        assert listing(editor, "checkpoints")["zz-not-a-model.safetensors"]["family"] is None

        editor.js("loom.clear()")
        open_tab(editor, "models", f'.model-item[data-name="{loom_server.checkpoint}"]')
        row = editor.page.locator(f'.model-item[data-name="{loom_server.checkpoint}"]')
        assert row.locator(".family").inner_text() == "SD1.x"
        assert row.locator(".size").inner_text().endswith("MiB")
        assert "CheckpointLoaderSimple" in row.get_attribute("title")
        assert editor.page.locator('.model-folder[data-folder="checkpoints"] summary').inner_text().startswith("checkpoints")

        # drag onto the canvas: a CheckpointLoaderSimple with that file, where it was dropped
        box = editor.page.locator("#graph").bounding_box()
        drop = (box["x"] + 300, box["y"] + 250)
        editor.page.drag_and_drop(f'.model-item[data-name="{loom_server.checkpoint}"]', "#graph",
                                  target_position={"x": 300, "y": 250})
        editor.frame()
        [node] = editor.js("loom.nodes()")
        assert node["type"] == "CheckpointLoaderSimple" and node["widgets"]["ckpt_name"] == loom_server.checkpoint
        gx, gy = editor.js(f"() => loom.toGraph({drop[0]}, {drop[1]})")
        assert abs(node["pos"][0] - gx) < 2 and abs(node["pos"][1] - 30 - gy) < 2
        assert editor.js("loom.editor.history.canUndo")

        # a click adds one in the middle of the view; the search narrows the list
        before = {n["id"] for n in editor.js("loom.nodes()")}
        row.click()
        [clicked] = added(editor, before)
        assert clicked["type"] == "CheckpointLoaderSimple" and clicked["widgets"]["ckpt_name"] == loom_server.checkpoint
        editor.page.fill(".model-search", loom_server.checkpoint[:6])
        visible = editor.page.locator(".model-item:visible").all_inner_texts()
        assert visible and all(loom_server.checkpoint[:6] in text for text in visible)
        editor.page.fill(".model-search", "")

        # refresh: a file put in the folder meanwhile appears, with its family
        shutil.copyfile(folder / loom_server.checkpoint, copy)
        assert editor.page.locator(f'.model-item[data-name="{copy.name}"]').count() == 0
        editor.page.click(".model-refresh")
        editor.page.wait_for_selector(f'.model-item[data-name="{copy.name}"]')
        assert editor.page.locator(f'.model-item[data-name="{copy.name}"] .family').inner_text() == "SD1.x"
        assert editor.page.locator('.model-item[data-name="zz-not-a-model.safetensors"] .family').count() == 0
        # dropped on a Load Checkpoint already there, the file is selected in it: no new node
        count = len(editor.js("loom.nodes()"))
        tx, ty = editor.point("bodyPoint", node["id"])
        editor.page.drag_and_drop(f'.model-item[data-name="{copy.name}"]', "#graph",
                                  target_position={"x": tx - box["x"], "y": ty - 10 - box["y"]})
        editor.frame()
        assert len(editor.js("loom.nodes()")) == count
        assert editor.js(f"loom.node({node['id']})")["widgets"]["ckpt_name"] == copy.name
        editor.page.screenshot(path=str(screenshot_path("model-library.png", tmp_path)))

        # M and N toggle the libraries (ComfyUI's keys)
        editor.click(editor.js("loom.emptyPoint()"))
        editor.keyboard.press("n")
        editor.page.wait_for_selector(".node-library")
        editor.keyboard.press("m")
        editor.page.wait_for_selector(".model-library")
        editor.keyboard.press("m")
        assert editor.page.locator(".sidebar").is_hidden()
    finally:
        broken.unlink(missing_ok=True)
        copy.unlink(missing_ok=True)


def test_node_library_tree_search_tooltips_and_drag(editor, tmp_path):
    editor.js("loom.clear()")
    open_tab(editor, "nodes", ".node-library")
    categories = editor.js("() => [...new Set(loom.defs.all().filter(d => !d.deprecated).map(d => (d.category || 'other').split('/')[0]))].sort()")
    tops = editor.page.locator(".node-tree > details.node-category").evaluate_all("els => els.map(e => e.dataset.path)")
    assert tops == categories
    # a branch opens to its sub-categories and nodes; each node's tooltip is its /object_info description
    editor.page.click('.node-category[data-path="image"] > summary')
    editor.page.click('.node-category[data-path="image/mask"] > summary')
    mask_node = editor.page.locator('.node-category[data-path="image/mask"] .node-item[data-type="MaskToImage"]')
    assert mask_node.is_visible()
    info = json.loads(editor.page.request.get(f"{editor.url}/api/object_info/LoadImage").text())["LoadImage"]
    load_image = editor.page.locator('.node-category[data-path="image"] > ul > .node-item[data-type="LoadImage"]')
    assert info["description"] and info["description"] in load_image.get_attribute("title")
    assert load_image.inner_text() == info["display_name"]
    count = editor.page.locator('.node-category[data-path="image"] > summary .count').inner_text()
    assert int(count) == editor.js("loom.defs.all().filter(d => !d.deprecated && (d.category === 'image' || d.category.startsWith('image/'))).length")

    editor.page.screenshot(path=str(screenshot_path("node-library.png", tmp_path)))

    # search: only matches stay, their categories open
    editor.page.fill(".node-search", "ksampler advanced")
    visible = editor.page.locator(".node-item:visible").evaluate_all("els => els.map(e => e.dataset.type)")
    assert visible == ["KSamplerAdvanced"]
    assert editor.page.locator('.node-category[data-path="model/sampling"]').evaluate("e => e.open")

    # drag onto the canvas: the node where it was dropped
    box = editor.page.locator("#graph").bounding_box()
    editor.page.drag_and_drop('.node-item[data-type="KSamplerAdvanced"]', "#graph", target_position={"x": 420, "y": 300})
    editor.frame()
    [node] = editor.js("loom.nodes()")
    assert node["type"] == "KSamplerAdvanced"
    gx, gy = editor.js(f"() => loom.toGraph({box['x'] + 420}, {box['y'] + 300})")
    assert abs(node["pos"][0] - gx) < 2 and abs(node["pos"][1] - 30 - gy) < 2
    # a click adds one in the middle of the view; an empty search shows the tree as it was left
    editor.page.click('.node-item[data-type="KSamplerAdvanced"]')
    assert [n["type"] for n in editor.js("loom.nodes()")] == ["KSamplerAdvanced", "KSamplerAdvanced"]
    editor.page.fill(".node-search", "")
    assert editor.page.locator('.node-category[data-path="image"]').evaluate("e => e.open")
    assert not editor.page.locator('.node-category[data-path="model"]').evaluate("e => e.open")
    editor.page.fill(".node-search", "no such node anywhere")
    assert editor.page.locator(".node-library .library-empty").is_visible()

"""Canvas interaction in real Chromium: pan/zoom, search, links (type-checked), widgets, selection."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def small_graph(editor) -> tuple[int, int]:
    """An empty canvas at scale 1 with EmptyImage (left) and SaveImage (right), unlinked."""
    editor.js("loom.clear()")
    editor.js("""() => { loom.canvas.viewport.scale = 1; loom.canvas.viewport.offset = [0, 0];
                 loom.editor.addNode('EmptyImage', [100, 100]); loom.editor.addNode('SaveImage', [600, 100]); }""")
    editor.frame()
    ids = [n["id"] for n in editor.js("loom.nodes()")]
    return ids[0], ids[1]


def test_pan_zoom_to_cursor_and_fit(editor):
    small_graph(editor)
    before = editor.js("loom.viewport()")
    editor.drag((300, 650), (420, 700))  # empty canvas: pans
    after = editor.js("loom.viewport()")
    assert after["offset"][0] == pytest.approx(before["offset"][0] + 120, abs=1)
    assert after["offset"][1] == pytest.approx(before["offset"][1] + 50, abs=1)

    # space + drag pans even when the drag starts on a node
    image_pos = editor.js("loom.nodes()")[0]["pos"]
    editor.drag(editor.point("titlePoint", 1), (600, 600), modifiers=("Space",))
    assert editor.js("loom.nodes()")[0]["pos"] == image_pos
    after = editor.js("loom.viewport()")

    under = editor.js("loom.toGraph(500, 400)")
    editor.mouse.move(500, 400)
    editor.mouse.wheel(0, -300)
    editor.frame()
    zoomed = editor.js("loom.viewport()")
    assert zoomed["scale"] > after["scale"]
    assert editor.js("loom.toGraph(500, 400)") == pytest.approx(under, abs=0.5)

    editor.click((1000, 700))
    editor.keyboard.press(".")
    editor.frame()
    for node in editor.js("loom.nodes()"):
        x, y = editor.js(f"loom.toClient({node['pos'][0]}, {node['pos'][1]})")
        assert 0 <= x <= 1400 and 40 <= y <= 820


def test_search_adds_nodes_and_links_are_type_checked(editor):
    editor.js("loom.clear()")
    editor.frame()
    latent = editor.add_node_by_search("empty latent", (200, 200), "EmptyLatentImage")
    save = editor.add_node_by_search("save im", (800, 200), "SaveImage")
    image = editor.add_node_by_search("emptyimage", (200, 500), "EmptyImage")

    editor.connect(latent, "LATENT", save, "images")  # LATENT into IMAGE: refused
    assert editor.js("loom.links()") == []
    assert editor.page.locator(".toast").last.inner_text().startswith("cannot connect LATENT")

    editor.connect(image, "IMAGE", save, "images")
    links = editor.js("loom.links()")
    assert [(l["origin_id"], l["target_id"], l["type"]) for l in links] == [(image, save, "IMAGE")]

    # a second source into the same input replaces the first link
    other = editor.add_node_by_search("emptyimage", (200, 700), "EmptyImage")
    editor.connect(other, 0, save, 0)
    assert [(l["origin_id"], l["target_id"]) for l in editor.js("loom.links()")] == [(other, save)]
    assert editor.js(f"loom.node({image})")["outputs"][0]["links"] == []

    # dragging the link's end off the input detaches it
    editor.drag(editor.point("slotPoint", save, "input", "images"), (700, 650))
    assert editor.js("loom.links()") == []
    assert editor.js(f"loom.node({save})")["inputs"][0]["link"] is None

    # and a link can be drawn backwards, from the input to an output
    editor.drag(editor.point("slotPoint", save, "input", "images"), editor.point("slotPoint", image, "output", "IMAGE"))
    assert [(l["origin_id"], l["target_id"]) for l in editor.js("loom.links()")] == [(image, save)]


def test_link_released_on_empty_space_offers_compatible_nodes(editor):
    editor.js("loom.clear()")
    editor.frame()
    latent = editor.add_node_by_search("latent", (200, 200), "EmptyLatentImage")
    editor.drag(editor.point("slotPoint", latent, "output", "LATENT"), (700, 300))
    editor.page.wait_for_selector(".search-box")
    offered = editor.js("[...document.querySelectorAll('.search-results li')].map(li => li.dataset.type)")
    assert "SaveImage" not in offered and "EmptyImage" not in offered
    accepts = editor.js("""(types) => types.map(t => loom.defs.get(t).sockets.some(s => s.type === 'LATENT' || s.type === '*'))""",
                        offered)
    assert offered and all(accepts)
    editor.keyboard.type("upscale by")
    editor.page.click('.search-results li[data-type="LatentUpscaleBy"]')
    editor.frame()
    nodes = editor.js("loom.nodes()")
    added = [n for n in nodes if n["type"] == "LatentUpscaleBy"][0]
    assert [(l["origin_id"], l["target_id"], l["target_slot"]) for l in editor.js("loom.links()")] == [
        (latent, added["id"], 0)]


def test_number_combo_toggle_text_and_multiline_widgets(editor):
    editor.js("loom.clear()")
    editor.js("""() => { loom.canvas.viewport.scale = 1; loom.canvas.viewport.offset = [0, 0];
      for (const [type, x, y] of [['EmptyLatentImage', 80, 80], ['LatentUpscale', 480, 80], ['PrimitiveBoolean', 80, 380],
                                 ['PrimitiveString', 480, 380], ['PrimitiveStringMultiline', 880, 80]])
        loom.editor.addNode(type, [x, y]); }""")
    editor.frame()
    latent, upscale, boolean, string, multiline = [n["id"] for n in editor.js("loom.nodes()")]
    step = editor.js(f"loom.graph.getNode({latent}).widget('width').options.step")

    editor.click(editor.point("widgetPoint", latent, "width", "right"))
    assert editor.js(f"loom.node({latent})")["widgets"]["width"] == 1024 + step
    editor.click(editor.point("widgetPoint", latent, "width", "left"))
    editor.click(editor.point("widgetPoint", latent, "width", "left"))
    assert editor.js(f"loom.node({latent})")["widgets"]["width"] == 1024 - step

    x, y = editor.point("widgetPoint", latent, "height")
    editor.drag((x, y), (x + 10, y), steps=5)  # scrub: one step per pixel
    assert editor.js(f"loom.node({latent})")["widgets"]["height"] == 1024 + 10 * step

    editor.type_into_widget(latent, "batch_size", "3")
    assert editor.js(f"loom.node({latent})")["widgets"]["batch_size"] == 3
    editor.type_into_widget(latent, "width", "99999999")  # clamped to max
    width_max = editor.js(f"loom.graph.getNode({latent}).widget('width').options.max")
    assert editor.js(f"loom.node({latent})")["widgets"]["width"] == width_max

    editor.choose_combo(upscale, "upscale_method", "bil", "bilinear")
    assert editor.js(f"loom.node({upscale})")["widgets"]["upscale_method"] == "bilinear"
    editor.click(editor.point("widgetPoint", upscale, "upscale_method", "right"))
    values = editor.js(f"loom.graph.getNode({upscale}).widget('upscale_method').options.values")
    assert editor.js(f"loom.node({upscale})")["widgets"]["upscale_method"] == values[values.index("bilinear") + 1]

    editor.click(editor.point("widgetPoint", boolean, "value"))
    assert editor.js(f"loom.node({boolean})")["widgets"]["value"] is True

    editor.type_into_widget(string, "value", "a red fox")
    assert editor.js(f"loom.node({string})")["widgets"]["value"] == "a red fox"

    editor.click(editor.point("widgetPoint", multiline, "value"))
    editor.page.wait_for_selector(".overlay-textarea")
    editor.keyboard.type("line one")
    editor.keyboard.press("Enter")
    editor.keyboard.type("line two")
    editor.click((1200, 700))  # clicking the canvas commits
    assert editor.js(f"loom.node({multiline})")["widgets"]["value"] == "line one\nline two"
    assert editor.js("document.querySelector('.overlay-textarea')") is None


def test_select_move_delete_duplicate_collapse_resize_and_title(editor):
    image, save = small_graph(editor)
    editor.click(editor.point("titlePoint", image))
    assert [n["id"] for n in editor.js("loom.nodes()") if n["selected"]] == [image]
    editor.keyboard.down("Shift")
    editor.click(editor.point("titlePoint", save))
    editor.keyboard.up("Shift")
    assert sorted(n["id"] for n in editor.js("loom.nodes()") if n["selected"]) == sorted([image, save])

    editor.click((1200, 750))  # empty canvas clears the selection
    assert not any(n["selected"] for n in editor.js("loom.nodes()"))
    editor.drag((40, 70), (1000, 700), modifiers=("Control",))  # rubber band
    assert all(n["selected"] for n in editor.js("loom.nodes()"))

    before = {n["id"]: n["pos"] for n in editor.js("loom.nodes()")}
    start = editor.point("titlePoint", image)
    editor.drag(start, (start[0] + 40, start[1] + 30))
    after = {n["id"]: n["pos"] for n in editor.js("loom.nodes()")}
    for node_id in before:  # both selected nodes moved together
        assert after[node_id] == pytest.approx([before[node_id][0] + 40, before[node_id][1] + 30], abs=0.5)

    editor.click(editor.point("titlePoint", image))
    editor.keyboard.press("Control+d")
    editor.frame()
    nodes = editor.js("loom.nodes()")
    assert len(nodes) == 3 and nodes[-1]["type"] == "EmptyImage" and nodes[-1]["selected"]
    copy = nodes[-1]["id"]
    editor.keyboard.press("Delete")
    editor.frame()
    assert copy not in [n["id"] for n in editor.js("loom.nodes()")]

    editor.click(editor.point("collapsePoint", image))
    assert editor.js(f"loom.node({image})")["collapsed"] is True
    editor.click(editor.point("collapsePoint", image))
    assert editor.js(f"loom.node({image})")["collapsed"] is False

    size = editor.js(f"loom.node({save})")["size"]
    corner = editor.point("resizePoint", save)
    editor.drag(corner, (corner[0] + 60, corner[1] + 40))
    assert editor.js(f"loom.node({save})")["size"] == pytest.approx([size[0] + 60, size[1] + 40], abs=1)

    editor.mouse.dblclick(*editor.point("titlePoint", save))
    editor.page.wait_for_selector(".overlay-input")
    editor.keyboard.press("Control+a")
    editor.keyboard.type("Final image")
    editor.keyboard.press("Enter")
    editor.frame()
    assert editor.js(f"loom.node({save})")["title"] == "Final image"
    assert editor.workflow()["nodes"][1]["title"] == "Final image"

    editor.mouse.click(*editor.point("titlePoint", save), button="right")
    editor.page.hover('.context-menu .menu-item[data-label="Colours"]')
    editor.page.click('.context-menu .menu-item[data-label="green"]')
    saved = [n for n in editor.workflow()["nodes"] if n["id"] == save][0]
    assert (saved["color"], saved["bgcolor"]) == ("#232", "#353")


def test_canvas_redraws_only_on_change(editor):
    small_graph(editor)
    frames = editor.js("loom.frames()")
    editor.page.wait_for_timeout(300)
    assert editor.js("loom.frames()") == frames  # idle: nothing is drawn
    editor.mouse.move(900, 700)
    editor.mouse.move(950, 720)
    editor.page.wait_for_timeout(100)
    assert editor.js("loom.frames()") == frames  # hovering empty space changes nothing
    editor.mouse.move(500, 400)
    editor.mouse.wheel(0, -100)
    editor.frame()
    assert editor.js("loom.frames()") > frames


def test_nodes_outside_the_view_are_not_drawn(editor):
    image, save = small_graph(editor)
    editor.js("() => { loom.canvas.viewport.offset = [-560, 0]; loom.canvas.setDirty(); }")
    editor.frame()
    assert editor.js("loom.renderStats().nodes") == 1
    assert editor.js("loom.renderStats().lowDetail") is False
    editor.js("() => { loom.canvas.viewport.scale = 0.3; loom.canvas.viewport.offset = [0, 0]; loom.canvas.setDirty(); }")
    editor.frame()
    assert editor.js("loom.renderStats().nodes") == 2
    assert editor.js("loom.renderStats().lowDetail") is True  # zoomed out: boxes, straight links, no text


def test_add_node_from_the_canvas_menu_categories(editor):
    editor.js("loom.clear()")
    editor.frame()
    editor.mouse.click(600, 300, button="right")
    editor.page.hover('.context-menu .menu-item[data-label="Add Node"]')
    editor.page.hover('.context-menu .menu-item[data-label="model"]')  # ComfyUI's model/latent, nested by "/"
    # model's own submenu (the last menu open): a top-level "latent" category (latent/sd3, ...) exists too
    editor.page.locator(".context-menu").last.locator('.menu-item[data-label="latent"]').hover()
    editor.page.click('.context-menu .menu-item[data-label="Empty Latent Image"]')
    editor.frame()
    nodes = editor.js("loom.nodes()")
    assert [n["type"] for n in nodes] == ["EmptyLatentImage"]
    x, y = editor.js(f"loom.toClient({nodes[0]['pos'][0]}, {nodes[0]['pos'][1] - 30})")
    assert (x, y) == pytest.approx((600, 300), abs=1)  # placed where the menu was opened


def test_hovering_a_slot_or_widget_shows_its_tooltip(editor):
    image, save = small_graph(editor)
    editor.mouse.move(*editor.point("slotPoint", save, "input", "images"))
    assert editor.js("document.getElementById('graph').title").startswith("images (IMAGE)")
    editor.mouse.move(*editor.point("widgetPoint", save, "filename_prefix"))
    tooltip = editor.js(f"loom.graph.getNode({save}).widget('filename_prefix').tooltip") or ""
    assert editor.js("document.getElementById('graph').title") == tooltip
    editor.mouse.move(1300, 780)
    assert editor.js("document.getElementById('graph').title") == ""

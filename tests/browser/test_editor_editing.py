"""Power-user editing in real Chromium: undo/redo, copy/paste (also across tabs), align, bypass and mute."""
from __future__ import annotations

import pytest

from tests.browser.conftest import EDITOR_PATH
from test_editor_canvas import small_graph

pytestmark = pytest.mark.browser


def pixel_in_body(editor, node_id: int) -> tuple[int, int, int]:
    """The canvas colour just inside a node's bottom-left corner (clear of widgets and slots)."""
    return tuple(editor.js("""(id) => { const n = loom.graph.getNode(id); const c = document.getElementById('graph');
        const [x, y] = loom.toClient(n.pos[0] + 5, n.pos[1] + n.size[1] - 5); const r = c.getBoundingClientRect();
        const ratio = devicePixelRatio || 1;
        return Array.from(c.getContext('2d').getImageData((x - r.left) * ratio, (y - r.top) * ratio, 1, 1).data).slice(0, 3); }""",
                           node_id))


def test_undo_redo_widget_link_add_and_delete(editor):
    image, save = small_graph(editor)
    width_before = editor.js(f"loom.node({image})")["widgets"]["width"]

    editor.click(editor.point("widgetPoint", image, "width", "right"))  # widget change
    editor.connect(image, "IMAGE", save, "images")  # link edit
    assert editor.js(f"loom.node({image})")["widgets"]["width"] == width_before + 1
    assert len(editor.js("loom.links()")) == 1

    editor.keyboard.press("Control+z")
    editor.frame()
    assert editor.js("loom.links()") == []
    editor.keyboard.press("Control+z")
    editor.frame()
    assert editor.js(f"loom.node({image})")["widgets"]["width"] == width_before
    editor.keyboard.press("Control+y")
    editor.keyboard.press("Control+Shift+z")
    editor.frame()
    assert editor.js(f"loom.node({image})")["widgets"]["width"] == width_before + 1
    assert len(editor.js("loom.links()")) == 1

    # a link dragged from one input to nothing, and a node delete, are single steps too
    editor.drag(editor.point("slotPoint", save, "input", "images"), (700, 650))
    assert editor.js("loom.links()") == []
    editor.click(editor.point("titlePoint", save))
    editor.keyboard.press("Delete")
    editor.frame()
    assert len(editor.js("loom.nodes()")) == 1
    editor.keyboard.press("Control+z")
    editor.frame()
    assert sorted(n["type"] for n in editor.js("loom.nodes()")) == ["EmptyImage", "SaveImage"]
    assert editor.js("loom.links()") == []
    editor.keyboard.press("Control+z")
    editor.frame()
    assert len(editor.js("loom.links()")) == 1

    # a node dragged across the canvas is one step, and undo leaves the view alone
    pos = editor.js(f"loom.node({image})")["pos"]
    editor.drag(editor.point("titlePoint", image), (400, 500), steps=10)
    view = editor.js("loom.viewport()")
    editor.keyboard.press("Control+z")
    editor.frame()
    assert editor.js(f"loom.node({image})")["pos"] == pos
    assert editor.js("loom.viewport()") == view


def test_copy_paste_keeps_internal_links_and_shift_keeps_inputs(editor):
    image, save = small_graph(editor)
    editor.connect(image, "IMAGE", save, "images")

    editor.click(editor.point("titlePoint", save))
    editor.keyboard.press("Control+c")
    editor.mouse.move(300, 600)
    editor.keyboard.press("Control+v")
    editor.frame()
    nodes = editor.js("loom.nodes()")
    assert len(nodes) == 3 and nodes[2]["type"] == "SaveImage" and nodes[2]["selected"]
    assert nodes[2]["inputs"][0]["link"] is None  # plain paste: the link from outside is dropped
    assert editor.js("loom.toGraph(300, 600)")[0] == pytest.approx(nodes[2]["pos"][0], abs=1)

    editor.keyboard.press("Control+Shift+v")
    editor.frame()
    pasted = editor.js("loom.nodes()")[3]
    link = editor.js("loom.links()")[-1]
    assert (link["origin_id"], link["target_id"]) == (image, pasted["id"])

    # both nodes: the link between them comes along
    editor.keyboard.press("Control+a")
    editor.keyboard.press("Control+c")
    editor.mouse.move(200, 700)
    editor.keyboard.press("Control+v")
    editor.frame()
    assert len(editor.js("loom.nodes()")) == 8
    new_ids = {n["id"] for n in editor.js("loom.nodes()")[4:]}
    assert any(l["origin_id"] in new_ids and l["target_id"] in new_ids for l in editor.js("loom.links()"))

    # another tab of the editor pastes what this one copied
    other = editor.page.context.new_page()
    other.goto(editor.url + EDITOR_PATH)
    other.wait_for_function("window.loom && window.loom.ready")
    other.evaluate("loom.clear()")
    other.mouse.move(400, 400)
    other.keyboard.press("Control+v")
    other.evaluate("loom.nextFrame()")
    assert sorted(n["type"] for n in other.evaluate("loom.nodes()")) == ["EmptyImage"] + ["SaveImage"] * 3
    assert len(other.evaluate("loom.links()")) == 2  # EmptyImage into the first two SaveImage nodes
    other.close()


def test_align_distribute_bypass_and_mute(editor):
    editor.js("loom.clear()")
    editor.js("""() => { loom.canvas.viewport.scale = 0.7; loom.canvas.viewport.offset = [0, 0];
                 loom.editor.addNode('EmptyImage', [100, 100]); loom.editor.addNode('EmptyImage', [500, 180]);
                 loom.editor.addNode('EmptyImage', [1200, 60]); }""")
    editor.keyboard.press("Control+a")
    editor.page.mouse.click(*editor.point("titlePoint", 2), button="right")
    editor.page.click('.context-menu .menu-item[data-label="Arrange selected"]')
    editor.page.click('.context-menu .menu-item[data-label="Align top"]')
    editor.frame()
    assert {n["pos"][1] for n in editor.js("loom.nodes()")} == {90}
    editor.js("loom.editor.distributeSelection('horizontal')")
    xs = sorted((n["pos"][0], n["size"][0]) for n in editor.js("loom.nodes()"))
    gaps = [xs[i + 1][0] - (xs[i][0] + xs[i][1]) for i in range(2)]
    assert gaps[0] == pytest.approx(gaps[1])

    editor.click(editor.point("titlePoint", 1))
    editor.keyboard.press("Control+b")
    editor.frame()
    assert editor.js("loom.node(1)")["mode"] == 4
    editor.keyboard.press("Control+m")
    editor.frame()
    assert editor.js("loom.node(1)")["mode"] == 2
    editor.keyboard.press("Control+m")
    assert editor.js("loom.node(1)")["mode"] == 0
    editor.keyboard.press("Control+b")
    editor.frame()
    # bypassed: tinted purple where the node body is drawn
    r, g, b = pixel_in_body(editor, 1)
    assert b > g and r > g
    assert next(n for n in editor.workflow()["nodes"] if n["id"] == 1)["mode"] == 4
    editor.keyboard.press("Control+z")
    assert editor.js("loom.node(1)")["mode"] == 0

    # P pins: a pinned node does not move when dragged, and is saved with flags.pinned
    editor.keyboard.press("p")
    pos = editor.js("loom.node(1)")["pos"]
    editor.drag(editor.point("titlePoint", 1), (600, 650))
    assert editor.js("loom.node(1)")["pos"] == pos
    assert next(n for n in editor.workflow()["nodes"] if n["id"] == 1)["flags"] == {"pinned": True}

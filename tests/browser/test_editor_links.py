"""Links in real Chromium: reroutes from a link's centre, a node dropped on a link is spliced in, a widget
converted to an input and back, a PrimitiveNode feeding it; the server converts all of them."""
from __future__ import annotations

import pytest

from test_editor_canvas import small_graph

pytestmark = pytest.mark.browser


def convert(editor) -> dict:
    return editor.page.evaluate("async () => (await loom.editor.api.convert(loom.serialize())).prompt")


def test_reroute_and_node_dropped_on_a_link(editor):
    image, save = small_graph(editor)
    editor.connect(image, "IMAGE", save, "images")
    [link] = editor.js("loom.links()")
    center = editor.js(f"() => loom.toClient(...loom.canvas.linkCenter(loom.graph.links.get({link['id']})))")
    editor.click(tuple(center))
    editor.page.click('.context-menu .menu-item[data-label="Add reroute"]')
    editor.frame()
    reroute = next(n for n in editor.js("loom.nodes()") if n["type"] == "Reroute")
    pairs = sorted((l["origin_id"], l["target_id"]) for l in editor.js("loom.links()"))
    assert pairs == sorted([(image, reroute["id"]), (reroute["id"], save)])
    saved = next(n for n in editor.workflow()["nodes"] if n["type"] == "Reroute")
    assert saved["size"] == [75, 26] and saved["outputs"][0]["type"] == "IMAGE"
    prompt = convert(editor)
    assert prompt[str(save)]["inputs"]["images"] == [str(image), 0]  # the server sees through the reroute

    editor.keyboard.press("Control+z")
    editor.frame()
    assert [(l["origin_id"], l["target_id"]) for l in editor.js("loom.links()")] == [(image, save)]

    # a new ImageInvert dragged onto the link's centre is spliced in
    invert = editor.js("loom.editor.addNode('ImageInvert', [350, 500]).id")
    editor.frame()
    center = editor.js("() => loom.toClient(...loom.canvas.linkCenter([...loom.graph.links.values()][0]))")
    title = editor.point("titlePoint", invert)
    node = editor.js(f"loom.node({invert})")
    grab = editor.js(f"loom.toClient({node['pos'][0]}, {node['pos'][1]})")  # body's top-left, to offset the drop
    editor.drag(title, (center[0] + title[0] - grab[0] - 20, center[1] + title[1] - grab[1] + 30), steps=10)
    pairs = sorted((l["origin_id"], l["target_id"]) for l in editor.js("loom.links()"))
    assert pairs == sorted([(image, invert), (invert, save)])


def test_widget_to_input_and_back_and_a_primitive_node(editor):
    image, save = small_graph(editor)
    editor.connect(image, "IMAGE", save, "images")
    editor.page.mouse.click(*editor.point("titlePoint", image), button="right")
    editor.page.click('.context-menu .menu-item[data-label="Convert widget to input"]')
    editor.page.click('.context-menu .menu-item[data-label="height"]')
    editor.frame()
    inputs = editor.js(f"loom.node({image})")["inputs"]
    assert inputs[-1]["name"] == "height" and inputs[-1]["type"] == "INT"
    editor.js(f"loom.slotPoint({image}, 'input', 'height')")  # the socket is drawn (hit-testable)
    saved = next(n for n in editor.workflow()["nodes"] if n["id"] == image)
    assert saved["inputs"][-1]["widget"] == {"name": "height"}

    # and back
    editor.page.mouse.click(*editor.point("titlePoint", image), button="right")
    editor.page.click('.context-menu .menu-item[data-label="Convert input to widget"]')
    editor.page.click('.context-menu .menu-item[data-label="height"]')
    assert all(i["name"] != "height" for i in editor.js(f"loom.node({image})")["inputs"])

    # a primitive feeds the width; the server takes its value
    editor.page.mouse.click(*editor.point("titlePoint", image), button="right")
    editor.page.click('.context-menu .menu-item[data-label="Add primitive for"]')
    editor.page.click('.context-menu .menu-item[data-label="width"]')
    editor.frame()
    primitive = next(n for n in editor.js("loom.nodes()") if n["type"] == "PrimitiveNode")
    editor.js(f"() => {{ loom.graph.getNode({primitive['id']}).raw.widgets_values[0] = 320; }}")
    prompt = convert(editor)
    assert prompt[str(image)]["inputs"]["width"] == 320
    assert str(primitive["id"]) not in prompt

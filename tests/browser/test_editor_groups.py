"""Groups in real Chromium: Ctrl+G around the selection, title, colour, move with their nodes, resize."""
from __future__ import annotations

import pytest

from test_editor_canvas import small_graph

pytestmark = pytest.mark.browser


def test_group_from_selection_moves_its_nodes_and_resizes(editor):
    image, save = small_graph(editor)
    editor.click(editor.point("titlePoint", image))
    editor.keyboard.press("Control+g")
    editor.frame()
    [group] = editor.workflow()["groups"]
    node = editor.js(f"loom.node({image})")
    x, y, w, h = group["bounding"]
    assert x < node["pos"][0] and y < node["pos"][1] - 30
    assert x + w > node["pos"][0] + node["size"][0] and y + h > node["pos"][1] + node["size"][1]

    # drag the group by its title bar: the node inside comes along, the one outside stays
    save_pos = editor.js(f"loom.node({save})")["pos"]
    title = editor.js(f"loom.toClient({x + w - 20}, {y + 10})")
    editor.drag(tuple(title), (title[0] + 100, title[1] + 50))
    [moved] = editor.workflow()["groups"]
    assert moved["bounding"][:2] == pytest.approx([x + 100, y + 50])
    assert editor.js(f"loom.node({image})")["pos"] == pytest.approx([node["pos"][0] + 100, node["pos"][1] + 50])
    assert editor.js(f"loom.node({save})")["pos"] == save_pos

    # resize from the bottom-right corner
    x, y, w, h = moved["bounding"]
    corner = editor.js(f"loom.toClient({x + w - 3}, {y + h - 3})")
    editor.drag(tuple(corner), (corner[0] + 60, corner[1] + 40))
    assert editor.workflow()["groups"][0]["bounding"][2:] == pytest.approx([w + 60, h + 40])

    # title by double-click, colour from its menu; both undoable
    editor.mouse.dblclick(*editor.js(f"loom.toClient({x + 40}, {y + 10})"))
    editor.page.wait_for_selector(".overlay-input")
    editor.keyboard.press("Control+a")
    editor.keyboard.type("Inputs")
    editor.keyboard.press("Enter")
    editor.page.mouse.click(*editor.js(f"loom.toClient({x + 40}, {y + 10})"), button="right")
    editor.page.click('.context-menu .menu-item[data-label="Colour"]')
    editor.page.click('.context-menu .menu-item[data-label="yellow"]')
    editor.frame()
    group = editor.workflow()["groups"][0]
    assert (group["title"], group["color"]) == ("Inputs", "#b58b2a")
    editor.keyboard.press("Control+z")
    editor.keyboard.press("Control+z")
    assert editor.workflow()["groups"][0]["title"] == "Group"

"""The graph's typed change events (web/graph/model.js): each gesture or command emits one change saying
what it did; and the keymap (web/ui/keymap.js) is the table both the keys and the Shortcuts panel use."""
from __future__ import annotations

import pytest

from test_editor_canvas import small_graph

pytestmark = pytest.mark.browser

RECORD = """() => { window.__changes = []; loom.graph.onChange((c) => window.__changes.push({ type: c.type,
    ids: c.ids, id: c.id, delta: c.delta, name: c.name, value: c.value, field: c.field,
    link: c.link && { origin_id: c.link.origin_id, target_id: c.link.target_id } })); }"""


def changes(editor) -> list[dict]:
    """The changes emitted since the last call (the fields each has)."""
    return [{k: v for k, v in c.items() if v is not None} for c in editor.js("() => window.__changes.splice(0)")]


def test_each_edit_emits_one_typed_change(editor):
    image, save = small_graph(editor)
    editor.js(RECORD)

    editor.connect(image, "IMAGE", save, "images")
    [connect] = changes(editor)
    assert connect["type"] == "connect" and connect["link"] == {"origin_id": image, "target_id": save}

    start = editor.point("titlePoint", image)
    editor.drag(start, (start[0] + 50, start[1] + 30))
    [move] = changes(editor)
    assert move["type"] == "move" and move["ids"] == [image]
    assert move["delta"] == pytest.approx([50, 30], abs=1)  # at scale 1

    corner = editor.point("resizePoint", save)
    editor.drag(corner, (corner[0] + 40, corner[1] + 40))
    [resize] = changes(editor)
    assert resize["type"] == "resize" and resize["id"] == save

    editor.js(f"() => {{ const n = loom.graph.getNode({image}); loom.editor.setWidgetValue(n, n.widget('width'), 640); }}")
    assert changes(editor) == [{"type": "widget", "name": "width", "value": 640}]

    editor.click(editor.point("titlePoint", save))
    editor.keyboard.press("Control+b")
    [mode] = changes(editor)
    assert mode["type"] == "node" and mode["field"] == "mode" and mode["ids"] == [save]

    editor.keyboard.press("Delete")
    assert [c["type"] for c in changes(editor)] == ["remove-node"]
    # one step each in the undo history: the delete comes back first
    editor.keyboard.press("Control+z")
    assert len(editor.js("loom.nodes()")) == 2


def test_the_shortcuts_panel_is_the_keymap(editor):
    rows = editor.js("async () => (await import('./ui/keymap.js')).shortcutRows()")
    editor.keyboard.press("q")
    panel = editor.page.locator(".sidebar")
    panel.locator('button[data-tab="shortcuts"]').click()
    shown = [r.split("\t") for r in editor.page.locator(".shortcuts tr").all_inner_texts()]
    assert shown == rows
    assert ["Ctrl+Shift+Enter", "Queue at the front"] in rows and ["Alt+Shift+M", "Show or hide the minimap"] in rows

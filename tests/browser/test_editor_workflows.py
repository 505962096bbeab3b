"""Workflows, plural, in real Chromium: tabs with their own graph, undo history and unsaved marker; the
Workflows panel saving, opening, renaming, duplicating and deleting through ComfyUI's user-data API; tabs
back after a reload; the Templates dialog (also on a first visit) opening an example in a new tab."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser.conftest import EDITOR_PATH, NOT_FIRST_VISIT, VIEWPORT, EditorPage, screenshot_path

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]


def saved_names(server) -> list[str]:
    try:
        with urllib.request.urlopen(f"{server.url}/api/userdata?dir=workflows") as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        assert error.code == 404
        return []


def clear_saved(server) -> None:
    for name in saved_names(server):
        request = urllib.request.Request(f"{server.url}/api/userdata/workflows%2F{urllib.request.quote(name, safe='')}",
                                         method="DELETE")
        urllib.request.urlopen(request).close()


def tabs(editor) -> list[dict]:
    return editor.js("loom.tabs()")


def types(editor) -> list[str]:
    return sorted(n["type"] for n in editor.js("loom.nodes()"))


def add(editor, node_type: str, x: float = 100, y: float = 100) -> int:
    return editor.js(f"() => loom.editor.addNode('{node_type}', [{x}, {y}]).id")


def open_panel(editor) -> None:
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("w")
    editor.page.wait_for_selector(".workflows-panel")


def save_as(editor, name: str) -> None:
    editor.page.click(".workflow-save-as")
    editor.page.fill(".workflow-name-input", name)
    editor.page.keyboard.press("Enter")
    editor.page.wait_for_selector(f'.workflow-item[data-name="{name}"]')


def test_two_tabs_keep_separate_graphs_and_undo(editor):
    editor.js("loom.clear()")
    first = add(editor, "EmptyImage")
    editor.page.wait_for_function("loom.editor.history.canUndo")
    assert tabs(editor)[0]["modified"]
    editor.page.click(".tab-new")
    editor.page.wait_for_function("loom.tabs().length === 2 && loom.nodes().length === 7")
    second_tab = tabs(editor)[1]
    assert second_tab["active"] and not second_tab["modified"]
    assert editor.page.locator(".workflow-tab.active .tab-marker").inner_text() == ""
    add(editor, "PreviewImage", 600, 600)
    editor.page.wait_for_function("loom.tabs()[1].modified")
    assert editor.page.locator(".workflow-tab.active .tab-marker").inner_text() == "•"
    assert editor.page.locator(".workflow-tab.active.modified").count() == 1
    assert len(editor.js("loom.nodes()")) == 8

    # back to the first: its graph and its own undo; the second's edit is not in it
    editor.page.locator(".workflow-tab").nth(0).click()
    editor.frame()
    assert types(editor) == ["EmptyImage"] and editor.js("loom.nodes()")[0]["id"] == first
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("Control+z")
    editor.frame()
    assert types(editor) == [] and tabs(editor)[0]["modified"]  # cleared: still not what was opened
    editor.keyboard.press("Control+z")
    editor.frame()
    assert len(editor.js("loom.nodes()")) == 7 and not tabs(editor)[0]["modified"]  # back to what was opened
    assert editor.page.locator(".workflow-tab").nth(0).locator(".tab-marker").inner_text() == ""
    editor.keyboard.press("Control+y")
    editor.keyboard.press("Control+y")
    editor.frame()
    assert types(editor) == ["EmptyImage"] and tabs(editor)[0]["modified"]

    # the second still has its node and its undo step
    editor.page.locator(".workflow-tab").nth(1).click()
    editor.frame()
    assert "PreviewImage" in types(editor) and len(editor.js("loom.nodes()")) == 8
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("Control+z")
    editor.frame()
    assert len(editor.js("loom.nodes()")) == 7 and "PreviewImage" not in types(editor)
    assert not tabs(editor)[1]["modified"]
    editor.keyboard.press("Control+z")  # nothing before the opened graph
    assert len(editor.js("loom.nodes()")) == 7

    # closing a tab shows the neighbour; closing the last leaves a fresh default tab
    editor.page.locator(".workflow-tab").nth(1).locator(".tab-close").click()
    editor.page.wait_for_function("loom.tabs().length === 1")
    assert types(editor) == ["EmptyImage"]


def test_save_open_rename_duplicate_delete_and_search(editor, loom_server, tmp_path):
    clear_saved(loom_server)
    editor.js("loom.clear()")
    add(editor, "EmptyImage")
    open_panel(editor)
    assert editor.page.locator(".workflow-item").count() == 0
    save_as(editor, "alpha flow")
    assert saved_names(loom_server) == ["alpha flow.json"]
    assert tabs(editor)[0]["name"] == "alpha flow" and tabs(editor)[0]["path"] == "workflows/alpha flow.json"
    assert not tabs(editor)[0]["modified"]
    saved = json.loads((loom_server.base_dir / "user" / "default" / "workflows" / "alpha flow.json").read_text())
    assert [n["type"] for n in saved["nodes"]] == ["EmptyImage"]

    # Ctrl+S saves the tab where it was saved
    add(editor, "SaveImage", 500, 100)
    editor.page.wait_for_function("loom.tabs()[0].modified")
    editor.click(editor.js("loom.emptyPoint()"))
    editor.keyboard.press("Control+s")
    editor.page.wait_for_function("!loom.tabs()[0].modified")
    saved = json.loads((loom_server.base_dir / "user" / "default" / "workflows" / "alpha flow.json").read_text())
    assert sorted(n["type"] for n in saved["nodes"]) == ["EmptyImage", "SaveImage"]

    # a second one, from a new tab; then open the first by a click (its tab comes to the front)
    editor.page.click(".tab-new")
    editor.page.wait_for_function("loom.tabs().length === 2 && loom.nodes().length === 7")
    save_as(editor, "beta")
    editor.page.click('.workflow-item[data-name="alpha flow"] .workflow-label')
    editor.page.wait_for_function("loom.tabs()[0].active")
    assert types(editor) == ["EmptyImage", "SaveImage"] and len(tabs(editor)) == 2

    # search by name
    editor.page.fill(".workflow-search", "alp")
    assert editor.page.locator(".workflow-item:visible").count() == 1
    assert editor.page.locator(".workflow-item:visible").get_attribute("data-name") == "alpha flow"
    editor.page.fill(".workflow-search", "zzz")
    assert editor.page.locator(".workflow-item:visible").count() == 0
    assert editor.page.locator(".workflow-empty").is_visible()
    editor.page.fill(".workflow-search", "")
    assert editor.page.locator(".workflow-item:visible").count() == 2

    # duplicate, rename (the open tab follows), delete
    editor.page.click('.workflow-item[data-name="beta"] [data-action="duplicate"]')
    editor.page.wait_for_selector('.workflow-item[data-name="beta copy"]')
    assert sorted(saved_names(loom_server)) == ["alpha flow.json", "beta copy.json", "beta.json"]
    editor.page.click('.workflow-item[data-name="alpha flow"] [data-action="rename"]')
    editor.page.fill(".workflow-name-input", "gamma")
    editor.page.keyboard.press("Enter")
    editor.page.wait_for_selector('.workflow-item[data-name="gamma"]')
    assert sorted(saved_names(loom_server)) == ["beta copy.json", "beta.json", "gamma.json"]
    assert tabs(editor)[0]["name"] == "gamma" and tabs(editor)[0]["path"] == "workflows/gamma.json"
    editor.page.click('.workflow-item[data-name="beta copy"] [data-action="delete"]')
    editor.page.click('.workflow-item[data-name="beta copy"] [data-action="delete"]')  # the second click confirms
    editor.page.wait_for_selector('.workflow-item[data-name="beta copy"]', state="detached")
    assert sorted(saved_names(loom_server)) == ["beta.json", "gamma.json"]
    # deleting the file of an open tab leaves the tab, unsaved
    editor.page.click('.workflow-item[data-name="beta"] [data-action="delete"]')
    editor.page.click('.workflow-item[data-name="beta"] [data-action="delete"]')
    editor.page.wait_for_selector('.workflow-item[data-name="beta"]', state="detached")
    beta = tabs(editor)[1]
    assert beta["path"] is None and beta["modified"] and saved_names(loom_server) == ["gamma.json"]

    editor.page.fill(".workflow-search", "")
    editor.page.click(".workflow-save-as")
    editor.page.fill(".workflow-name-input", "panel")
    editor.page.keyboard.press("Enter")
    editor.page.wait_for_selector('.workflow-item[data-name="panel"]')
    editor.page.fill(".workflow-search", "")
    editor.page.mouse.move(700, 500)
    assert editor.page.locator('.workflow-item.active[data-name="panel"]').count() == 1
    editor.js("document.querySelectorAll('.toast').forEach((t) => t.remove())")
    editor.page.screenshot(path=str(screenshot_path("workflows-panel.png", tmp_path)))


def test_tabs_come_back_after_a_reload(editor):
    editor.js("loom.clear()")
    add(editor, "EmptyImage")
    editor.page.click(".tab-new")
    editor.page.wait_for_function("loom.tabs().length === 2 && loom.nodes().length === 7")
    add(editor, "PreviewImage", 600, 600)
    editor.page.click(".tab-new")
    editor.page.wait_for_function("loom.tabs().length === 3 && loom.nodes().length === 7")
    editor.page.locator(".workflow-tab").nth(1).click()
    editor.frame()
    before = tabs(editor)
    editor.reload()
    after = tabs(editor)
    assert [(t["name"], t["active"], t["modified"]) for t in after] == \
        [(t["name"], t["active"], t["modified"]) for t in before]
    assert [t["modified"] for t in after] == [True, True, False]
    assert "PreviewImage" in types(editor) and len(editor.js("loom.nodes()")) == 8
    editor.page.locator(".workflow-tab").nth(0).click()
    editor.frame()
    assert types(editor) == ["EmptyImage"]
    assert editor.page.locator(".workflow-tab.modified").count() == 2


def test_a_saved_workflow_survives_a_server_restart(browser, tmp_path):
    from fixtures_server import ServerProcess

    base = tmp_path / "base"
    server = ServerProcess(base)
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(NOT_FIRST_VISIT)
    try:
        page = context.new_page()
        page.goto(server.url + EDITOR_PATH)
        page.wait_for_function("window.loom && window.loom.ready", timeout=20000)
        editor = EditorPage(page, server.url)
        editor.js("loom.clear()")
        add(editor, "EmptyImage")
        open_panel(editor)
        save_as(editor, "kept")
        assert server.terminate() == 0

        server = ServerProcess(base)  # the same base dir, a new process (and port)
        assert saved_names(server) == ["kept.json"]
        page2 = context.new_page()
        page2.goto(server.url + EDITOR_PATH)
        page2.wait_for_function("window.loom && window.loom.ready", timeout=20000)
        editor = EditorPage(page2, server.url)
        editor.js("loom.clear()")
        open_panel(editor)
        editor.page.click('.workflow-item[data-name="kept"] .workflow-label')
        editor.page.wait_for_function("loom.tabs().some(t => t.path === 'workflows/kept.json' && t.active)")
        assert types(editor) == ["EmptyImage"]
    finally:
        context.close()
        if server.proc.poll() is None:
            server.terminate()


def test_templates_open_in_a_new_tab_and_greet_a_first_visit(browser, loom_server, tmp_path):
    clear_saved(loom_server)
    context = browser.new_context(viewport=VIEWPORT)  # a first visit: no tabs kept, nothing saved
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(loom_server.url + EDITOR_PATH)
        page.wait_for_function("window.loom && window.loom.ready", timeout=20000)
        page.wait_for_selector(".templates-dialog .template-card")
        cards = page.locator(".template-card")
        names = [cards.nth(i).get_attribute("data-name") for i in range(cards.count())]
        assert sorted(names) == sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
        txt2img = page.locator('.template-card[data-name="txt2img"]')
        assert txt2img.locator(".template-description").inner_text()
        page.wait_for_function("""[...document.querySelectorAll('.template-card img.template-thumb')]
            .every(img => img.complete && img.naturalWidth > 0)""")
        assert page.locator(".template-card img.template-thumb").count() >= 4
        assert "needs" in page.locator('.template-card[data-name="sdxl-base-refiner"] .template-models').inner_text()
        page.locator(".templates-dialog").screenshot(path=str(screenshot_path("templates-dialog.png", tmp_path)))

        page.click('.template-card[data-name="img2img"]')
        page.wait_for_selector(".templates-backdrop", state="detached")
        editor = EditorPage(page, loom_server.url)
        page.wait_for_function("loom.tabs().length === 2")
        active = [t for t in tabs(editor) if t["active"]][0]
        assert active["name"] == "Image to image" and active["path"] is None and not active["modified"]
        expected = json.loads((REPO / "workflows" / "img2img.json").read_text())
        assert sorted(n["id"] for n in editor.js("loom.nodes()")) == sorted(n["id"] for n in expected["nodes"])
        assert types(editor) == sorted(n["type"] for n in expected["nodes"])
        load = next(n for n in editor.js("loom.nodes()") if n["type"] == "LoadImage")
        assert load["widgets"]["image"] == "demo-scene.png"

        # the dialog from the toolbar; Escape closes it; a second visit is not greeted again
        page.click("#btn-templates")
        page.wait_for_selector(".templates-dialog")
        page.keyboard.press("Escape")
        page.wait_for_selector(".templates-backdrop", state="detached")
        editor.reload()
        page.wait_for_timeout(300)
        assert page.locator(".templates-dialog").count() == 0
        assert [t["name"] for t in tabs(editor)][1] == "Image to image"
    finally:
        context.close()
    assert not errors, errors

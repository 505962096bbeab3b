"""The test hook stays out of the editor's page: `window.loom` and web/testing/hook.js only with `?test-hook`."""
from __future__ import annotations

import pytest

from tests.browser.conftest import EDITOR_PATH, NOT_FIRST_VISIT, VIEWPORT

pytestmark = pytest.mark.browser


def test_the_plain_page_loads_no_test_hook_and_the_flag_installs_it(browser, loom_server):
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(NOT_FIRST_VISIT)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        page.goto(loom_server.url + "/")
        page.wait_for_selector("#graph")
        page.wait_for_function("document.querySelector('.workflow-tab') !== null", timeout=20000)
        assert page.evaluate("typeof window.loom") == "undefined"
        assert not [url for url in requested if "/testing/" in url], requested

        page.goto(loom_server.url + EDITOR_PATH)
        page.wait_for_function("window.loom && window.loom.ready", timeout=20000)
        assert any(url.endswith("/testing/hook.js") for url in requested), requested
        assert page.evaluate("loom.nodes().length") > 0
    finally:
        context.close()

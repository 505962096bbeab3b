"""The editor's new-user notice: with no checkpoint of one's own it says where models go, once, until
dismissed; a server with a checkpoint shows none."""
from __future__ import annotations

import pytest

from tests.browser.conftest import EDITOR_PATH

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1400, "height": 820}

NOTICE = '.toast.notice[data-notice="no-checkpoint"]'


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory):
    """``loom serve`` on a fresh base dir: no checkpoint in models/checkpoints, no extra paths."""
    from fixtures_server import ServerProcess

    base_dir = tmp_path_factory.mktemp("loom-bare")
    server = ServerProcess(base_dir)
    server.base_dir = base_dir
    yield server
    if server.proc.poll() is None:
        server.terminate()


def _open(page, url: str) -> None:
    page.goto(url + EDITOR_PATH)
    page.wait_for_function("window.loom && window.loom.ready && window.loom.notices", timeout=20000)


def test_no_checkpoint_notice_shows_once_and_stays_dismissed(browser, bare_server):
    terminal = "".join(bare_server.lines)
    assert "You have no checkpoint of your own yet" in terminal, terminal

    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        _open(page, bare_server.url)
        assert page.evaluate("loom.notices") == ["no-checkpoint"]
        notice = page.locator(NOTICE)
        assert notice.count() == 1
        text = notice.inner_text()
        assert str(bare_server.base_dir / "models" / "checkpoints") in text
        assert "--models-dir" in text and "extra_model_paths.yaml" in text and "loom-demo.safetensors" in text
        # the notice is the terminal's message, word for word
        assert notice.locator("span").inner_text().splitlines()[0] in terminal

        # it stays (unlike a toast) until closed
        page.wait_for_timeout(500)
        assert notice.is_visible()
        notice.locator(".notice-close").click()
        assert page.locator(NOTICE).count() == 0

        # closed once, it does not come back on the next visit
        page.reload()
        page.wait_for_function("window.loom && window.loom.ready && window.loom.notices", timeout=20000)
        assert page.evaluate("loom.notices") == []
        assert page.locator(NOTICE).count() == 0
    finally:
        context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def test_a_server_with_a_checkpoint_shows_no_notice(browser, loom_server):
    if loom_server.checkpoint is None:
        pytest.skip("the tiny checkpoint fixtures are not available, so the session server has no checkpoint")
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        _open(page, loom_server.url)
        assert page.evaluate("loom.notices") == []
        assert page.locator(".toast.notice").count() == 0
    finally:
        context.close()

"""Hostile inputs against a real server (scale-security.md §B.3.1 validation, §B.3.2 files, §B.3.4 auth).

Every refusal must be a JSON error with the right status, never a 500, a traceback or a server path,
and must leave the queue untouched and the server responsive.
"""
from __future__ import annotations

import io
import json
import os
import struct
import time
import urllib.error
import urllib.request
import zlib

import aiohttp
import pytest
from PIL import Image

from tests.fixtures_server import LiveServer, ServerProcess, add_prompt, queue_prompt, run_async, wait_history

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def servers(tmp_path_factory, registry):
    """An open server (loopback, no token) with small limits, and one that requires a token."""
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig
    from loom.server.security import UploadLimits

    previous = folders.current()
    base = tmp_path_factory.mktemp("security_base")
    folders.configure(base)
    limits = UploadLimits(max_bytes=1024 * 1024, max_pixels=4096 * 4096)
    open_server = LiveServer(ServerConfig(registry=registry, upload=limits, max_prompt_bytes=1024 * 1024))
    locked = LiveServer(ServerConfig(registry=registry, token=TOKEN, db_path=base / "locked.sqlite3",
                                     user_dir=base / "locked-user"))
    yield open_server, locked
    open_server.close()
    locked.close()
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


@pytest.fixture(scope="module")
def live(servers):
    return servers[0]


@pytest.fixture(scope="module")
def locked(servers):
    return servers[1]


def run(coro):
    return run_async(coro)


def assert_clean_error(status: int, body: str, expected: tuple[int, ...]) -> None:
    assert status in expected, (status, body)
    assert "Traceback" not in body and "/work/" not in body and "/tmp/" not in body, body


async def post_raw(session, url: str, data: bytes, content_type: str = "application/json"):
    started = time.monotonic()
    async with session.post(url, data=data, headers={"Content-Type": content_type}) as response:
        return response.status, await response.text(), time.monotonic() - started


async def pending_count(session, base: str) -> int:
    async with session.get(f"{base}/queue") as response:
        return len((await response.json())["queue_pending"])


# -------------------------------------------------------------------------------------------------
# Unit checks of the helpers
# -------------------------------------------------------------------------------------------------

def test_names_and_paths_helpers(base_dir):
    from loom.server.security import (ClientError, check_name, check_subfolder, content_disposition, data_path,
                                 sanitize_upload_name)
    for bad in ("../x.png", "a/b.png", "..\\win.ini", "C:\\x", "x\x00.png", "..", "a\r\nb.png", "x" * 300):
        with pytest.raises(ClientError):
            check_name(bad)
    assert check_name("test..png") == "test..png" and check_name("ünïcode name.png")
    for bad in ("../..", "/abs", "a/../../b", "..\\..", "C:/x"):
        with pytest.raises(ClientError):
            check_subfolder(bad)
    assert check_subfolder("a//b/./c") == "a/b/c"
    assert sanitize_upload_name("../../evil.html", ".png") == "evil.png"
    assert sanitize_upload_name("CON.png", ".png") == "_CON.png"
    assert sanitize_upload_name("aux.tar.gz", ".png") == "_aux.tar.png"
    assert sanitize_upload_name('a"b;c\r\n.png', ".png") == "a_b_c.png"
    assert len(sanitize_upload_name("y" * 300 + ".png", ".png")) <= 204
    header = content_disposition("inline", 'x";\r\nSet-Cookie: a=b.png')
    assert "\r" not in header and "\n" not in header and header.count('"') == 2
    (base_dir / "input" / "link").symlink_to("/etc")
    with pytest.raises(ClientError) as refused:
        data_path("input", "passwd", "link")
    assert refused.value.status == 403
    with pytest.raises(ClientError):
        data_path("../x", "a.png")


def test_bind_and_token_defaults():
    from loom.server.app import ServerConfig
    from loom.server.security import SecurityConfig, is_loopback
    assert ServerConfig().host == "127.0.0.1"  # A1
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert SecurityConfig.for_bind("127.0.0.1").token is None
    exposed = SecurityConfig.for_bind("0.0.0.0")  # A2: never silently open
    assert exposed.auth_required and len(exposed.token) >= 32
    assert SecurityConfig.for_bind("0.0.0.0", "mine").token == "mine"


# -------------------------------------------------------------------------------------------------
# B.3.1 POST /prompt
# -------------------------------------------------------------------------------------------------

def test_malformed_bodies_are_400(live):
    """V1-V3, V13, V19: invalid JSON, wrong top-level shapes, deep nesting, UI format."""
    bodies = {
        b"": "invalid_json", b"{": "invalid_json", b'{"prompt": {"1": {': "invalid_json",
        b"\xff\xfe\x00": "invalid_json", b"\xef\xbb\xbf{}": "invalid_json",
        b'{"prompt": {"1": {"class_type": "TestConstInt", "inputs": {"value": NaN}}}}': "invalid_json",
        b"[]": None, b'"text"': None, b"1": None, b"null": None,
        b"{}": "no_prompt", b'{"prompt": []}': None, b'{"prompt": "x"}': None,
        b"[" * 100_000 + b"]" * 100_000: "invalid_json",
        json.dumps({"prompt": {"nodes": [], "links": [], "version": 0.4}}).encode(): "expected_api_format",
        json.dumps({"nodes": [], "links": []}).encode(): "expected_api_format",
    }

    async def main():
        async with aiohttp.ClientSession() as session:
            for body, kind in bodies.items():
                status, text, elapsed = await post_raw(session, f"{live.url}/prompt", body)
                assert_clean_error(status, text, (400,))
                error = json.loads(text)["error"]
                if kind:
                    assert error["type"] == kind, (body[:40], error)
                assert elapsed < 1.0
            assert await pending_count(session, live.url) == 0
    run(main())


def test_invalid_graphs_name_the_node_and_input(live):
    """V4-V11: each error names the node (and the input where there is one)."""
    cases = {
        "V4 node is a number": ({"1": 5, "9": {"class_type": "TestOutput", "inputs": {"value": 1}}}, "1", None),
        "V4 node is null": ({"1": None}, "1", None),
        "V5 no class_type": ({"1": {"inputs": {}}}, "1", None),
        "V5 unknown class_type": ({"1": {"class_type": "../../os.system", "inputs": {}}}, "1", None),
        "V6 missing node": ({"9": {"class_type": "TestOutput", "inputs": {"value": ["77", 0]}}}, "9", "value"),
        "V6 slot out of range": ({"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
                                  "9": {"class_type": "TestOutput", "inputs": {"value": ["1", 5]}}}, "9", "value"),
        "V6 negative slot": ({"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
                              "9": {"class_type": "TestOutput", "inputs": {"value": ["1", -1]}}}, "9", "value"),
        "V6 slot as string": ({"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
                               "9": {"class_type": "TestOutput", "inputs": {"value": ["1", "0"]}}}, "9", "value"),
        "V7 self loop": ({"1": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
                          "9": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}, "1", None),
        "V7 two-node cycle": ({"1": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 1}},
                               "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
                               "9": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}, "1", None),
        "V8 type mismatch": ({"1": {"class_type": "TestStringConcat", "inputs": {"a": "x", "b": "y"}},
                              "2": {"class_type": "TestIntToString", "inputs": {"value": ["1", 0]}},
                              "9": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}, "2", "value"),
        "V9 bool for int": (add_prompt(True), "1", "value"),
        "V9 float for int": (add_prompt(1.5), "1", "value"),
        "V9 1e999": (add_prompt(1e999), "1", "value"),
        "V10 out of range": (add_prompt(10**8), "1", "value"),
        "V11 not in list": ({"1": {"class_type": "TestChoice", "inputs": {"choice": "../x"}},
                             "9": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}, "1", "choice"),
        "F5 LoadImage traversal": ({"1": {"class_type": "LoadImage", "inputs": {"image": "../../x.png"}},
                                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}, "1", "image"),
        "F5 annotated traversal": ({"1": {"class_type": "LoadImage", "inputs": {"image": "x.png [../../]"}},
                                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}, "1", "image"),
        "F5 absolute path": ({"1": {"class_type": "LoadImage", "inputs": {"image": "/etc/passwd"}},
                              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}, "1", "image"),
        "F5 backslashes": ({"1": {"class_type": "LoadImage", "inputs": {"image": "..\\..\\x.png"}},
                            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}, "1", "image"),
    }
    cycle = {str(i): {"class_type": "TestAdd", "inputs": {"a": [str((i + 1) % 200), 0], "b": 1}}
             for i in range(200)}
    cycle["out"] = {"class_type": "TestOutput", "inputs": {"value": ["0", 0]}}
    cases["V7 200-node cycle"] = (cycle, "0", None)

    async def main():
        async with aiohttp.ClientSession() as session:
            for name, (prompt, node_id, input_name) in cases.items():
                body = json.dumps({"prompt": prompt}).replace("Infinity", "1e999").encode()
                status, text, elapsed = await post_raw(session, f"{live.url}/prompt", body)
                assert_clean_error(status, text, (400,))
                answer = json.loads(text)
                where = json.dumps(answer)
                assert node_id in answer["node_errors"] or f"node {node_id}" in where, (name, answer)
                if input_name:
                    assert input_name in where, (name, answer)
                assert elapsed < 2.0, name
            assert await pending_count(session, live.url) == 0
    run(main())


def test_size_limits_and_big_graphs(live):
    """V14 body over the limit is 413 before being buffered; V15 a 10,000-node chain validates fast."""
    async def main():
        async with aiohttp.ClientSession() as session:
            big = b'{"prompt": {"x": "' + b"a" * (2 * 1024 * 1024) + b'"}}'
            status, text, _ = await post_raw(session, f"{live.url}/prompt", big)
            assert_clean_error(status, text, (413,))

            async def chunks():  # no Content-Length: the limit must hold while streaming
                for _ in range(64):
                    yield b" " * 65536
            async with session.post(f"{live.url}/prompt", data=chunks(),
                                    headers={"Content-Type": "application/json"}) as response:
                assert response.status == 413
            chain = {"0": {"class_type": "TestConstInt", "inputs": {"value": 0}}}
            for i in range(1, 10_000):
                chain[str(i)] = {"class_type": "TestAdd", "inputs": {"a": [str(i - 1), 0], "b": 0}}
            chain["out"] = {"class_type": "TestOutput", "inputs": {"value": ["9999", 0]}}
            body = json.dumps({"prompt": chain}).encode()
            assert len(body) < 1024 * 1024
            status, text, elapsed = await post_raw(session, f"{live.url}/prompt", body)
            assert status == 200 and elapsed < 2.0, (status, text[:300], elapsed)
            prompt_id = json.loads(text)["prompt_id"]
            async with session.post(f"{live.url}/api/queue/{prompt_id}/cancel") as response:
                assert response.status == 200
            entry = await wait_history(session, live.url, prompt_id, timeout=60)
            assert entry["status"]["state"] in ("cancelled", "interrupted")
    run(main())


def test_prompt_fields(live):
    """V16 duplicate keys: the last wins; V17 prompt ids are validated and never overwrite; bad numbers."""
    async def main():
        async with aiohttp.ClientSession() as session:
            duplicate = ('{"prompt": ' + json.dumps(add_prompt(1)) + ', "prompt": ' + json.dumps(add_prompt(2))
                         + "}").encode()
            status, text, _ = await post_raw(session, f"{live.url}/prompt", duplicate)
            assert status == 200
            entry = await wait_history(session, live.url, json.loads(text)["prompt_id"])
            assert entry["outputs"]["9"] == {"text": ["2"]}
            first = await queue_prompt(session, live.url, add_prompt(3), prompt_id="my-job.1")
            assert first["prompt_id"] == "my-job.1"
            for bad_id in ("my-job.1", "x" * 10_000, "../../etc", "", 5):
                body = json.dumps({"prompt": add_prompt(4), "prompt_id": bad_id}).encode()
                status, text, _ = await post_raw(session, f"{live.url}/prompt", body)
                assert_clean_error(status, text, (400,))
            for field, value in (("number", "abc"), ("number", [1]), ("number", True), ("extra_data", []),
                                 ("client_id", {"a": 1}), ("partial_execution_targets", "9")):
                body = json.dumps({"prompt": add_prompt(5), field: value}).encode()
                status, text, _ = await post_raw(session, f"{live.url}/prompt", body)
                assert_clean_error(status, text, (400,))
            assert (await wait_history(session, live.url, "my-job.1"))["status"]["status_str"] == "success"
    run(main())


def test_partial_execution_targets(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 5}},
                      "8": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}},
                      "9": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
            queued = await queue_prompt(session, live.url, prompt, partial_execution_targets=["9"])
            entry = await wait_history(session, live.url, queued["prompt_id"])
            assert list(entry["outputs"]) == ["9"] and entry["prompt"][4] == ["9"]
            body = json.dumps({"prompt": prompt, "partial_execution_targets": []}).encode()
            status, text, _ = await post_raw(session, f"{live.url}/prompt", body)
            assert_clean_error(status, text, (400,))
    run(main())


# -------------------------------------------------------------------------------------------------
# B.3.2 files
# -------------------------------------------------------------------------------------------------

def test_view_refuses_traversal(live):
    """F1, F2, F3, F6, F7."""
    from loom.nodes.kernel import folders
    link = folders.input_dir() / "link"
    if not link.exists():
        link.symlink_to("/etc")
    evil = folders.output_dir() / "evil.png"
    if not evil.exists():
        evil.symlink_to("/etc/passwd")
    names = ["../../etc/passwd", "..\\..\\win.ini", "/etc/passwd", "C:\\Windows\\win.ini", "%2e%2e%2fpasswd",
             "%252e%252e%252f", "..%c0%afetc", "a.png%00.html", "....//", "x" * 300, "a\r\nb.png", "evil.png"]
    requests = [{"filename": n, "type": "output"} for n in names]
    requests += [{"filename": "passwd", "subfolder": "../../../../etc"},
                 {"filename": "passwd", "subfolder": "/etc"},
                 {"filename": "passwd", "type": "../x"}, {"filename": "x.png", "type": "models"},
                 {"filename": "passwd", "subfolder": "link", "type": "input"},
                 {"filename": "passwd [input]", "subfolder": "link"}]

    async def main():
        async with aiohttp.ClientSession() as session:
            for params in requests:
                async with session.get(f"{live.url}/view", params=params) as response:
                    text = await response.text(errors="replace")
                    assert_clean_error(response.status, text, (400, 403, 404))
                    assert "root:" not in text
            # the raw encoded forms, sent without the client re-encoding them
            for raw in ("filename=..%2F..%2Fetc%2Fpasswd", "filename=passwd&subfolder=..%2F..%2F..%2Fetc",
                        "filename=a.png%00.html"):
                async with session.get(f"{live.url}/view?{raw}") as response:
                    assert response.status in (400, 403, 404)
                    assert "root:" not in await response.text(errors="replace")
    run(main())


def test_view_serves_legit_names_safely(live):
    """F4 no over-blocking; F6 header encoding; F9 nosniff/CSP/attachment for non-raster files."""
    from loom.nodes.kernel import folders
    out = folders.output_dir()
    Image.new("RGB", (4, 4)).save(out / "test..png")
    Image.new("RGB", (4, 4)).save(out / "ünïcode name.png")
    Image.new("RGB", (4, 4)).save(out / 'quote";semi.png')
    (out / "page.html").write_text("<script>alert(1)</script>")
    (out / "pic.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')

    async def main():
        async with aiohttp.ClientSession() as session:
            for name in ("test..png", "ünïcode name.png", 'quote";semi.png'):
                async with session.get(f"{live.url}/view", params={"filename": name}) as response:
                    assert response.status == 200, name
                    assert response.headers["Content-Type"] == "image/png"
                    disposition = response.headers["Content-Disposition"]
                    assert disposition.startswith("inline;") and disposition.count('"') == 2
            for name in ("page.html", "pic.svg"):
                async with session.get(f"{live.url}/view", params={"filename": name}) as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"] == "application/octet-stream"
                    assert response.headers["Content-Disposition"].startswith("attachment;")
                    assert response.headers["X-Content-Type-Options"] == "nosniff"
                    assert "sandbox" in response.headers["Content-Security-Policy"]
    run(main())


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_upload_refuses_non_images_and_bombs(live):
    """F7 names, F8 non-images, F10 size limit without partial files, F11 decompression bombs."""
    from loom.nodes.kernel import folders
    hostile = {
        "page.html": b"<html><script>alert(1)</script></html>",
        "pic.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "tool.py": b"import os\nos.system('id')\n",
        "archive.zip": b"PK\x03\x04" + b"\x00" * 100,
        "poly.gif": b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=alert(1)//;",
    }

    async def send(session, data, filename):
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("image", data, filename=filename, content_type="image/png")
        async with session.post(f"{live.url}/upload/image", data=form) as response:
            return response.status, await response.text()

    async def main():
        async with aiohttp.ClientSession() as session:
            for filename, data in hostile.items():
                status, text = await send(session, data, filename)
                assert_clean_error(status, text, (415,))
            status, text = await send(session, b"\x00" * (2 * 1024 * 1024), "huge.png")
            assert_clean_error(status, text, (413,))
            status, text = await send(session, _png_header_only(30_000, 30_000), "bomb.png")
            assert_clean_error(status, text, (413,))
            small = io.BytesIO()
            Image.new("RGB", (5, 5), (1, 2, 3)).save(small, format="PNG")
            for name, expected in (("CON.png", "_CON.png"), ("aux.png", "_aux.png"),
                                   ("z" * 300 + ".png", "z" * 200 + ".png"), ("../../up.png", "up.png")):
                status, text = await send(session, small.getvalue(), name)
                assert status == 200 and json.loads(text)["name"] == expected, text
            # a JPEG named .html is stored as a re-encoded .jpg
            jpeg = io.BytesIO()
            Image.new("RGB", (5, 5)).save(jpeg, format="JPEG")
            status, text = await send(session, jpeg.getvalue(), "trick.html")
            assert status == 200 and json.loads(text)["name"] == "trick.jpg"
        leftovers = [p.name for p in folders.input_dir().iterdir() if p.name.endswith(".part")
                     or p.suffix in (".html", ".svg", ".py", ".zip", ".gif") or p.name.startswith("huge")]
        assert leftovers == []
    run(main())


# -------------------------------------------------------------------------------------------------
# B.3.4 authentication, CSRF, origin, WebSocket
# -------------------------------------------------------------------------------------------------

def test_every_route_requires_the_token(locked):
    """A3 (route inventory), A9 (no state change through GET)."""
    from loom.server.app import server_of
    from loom.server.security import PUBLIC_PATHS
    read_only = ("get_", "websocket", "static_file")
    routes = []
    for route in locked.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD" or path is None:
            continue
        routes.append((route.method, path.replace("{path:.*}", "x").replace("{", "").replace("}", "")))
        if route.method == "GET":
            assert route.handler.__name__.startswith(read_only), route.handler.__name__
    assert len(routes) > 60 and server_of(locked.app).security.auth_required

    async def main():
        async with aiohttp.ClientSession() as session:
            for method, path in routes:
                async with session.request(method, f"{locked.url}{path}") as response:
                    expected = 200 if path in PUBLIC_PATHS else 401
                    assert response.status == expected, (method, path, response.status)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{locked.url}/ws?clientId=x")
            assert refused.value.status == 401
    run(main())


def test_token_forms(locked):
    """A4: wrong token 401; header, query (which sets the cookie) and cookie accepted."""
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{locked.url}/queue", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with session.get(f"{locked.url}/queue", params={"token": "wrong"}) as r:
                assert r.status == 401
            async with session.get(f"{locked.url}/queue", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
        # like a browser, keep cookies of an IP-address host
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{locked.url}/", params={"token": TOKEN}) as r:
                assert r.status == 200
                cookie = r.cookies["loom_token"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
            async with browser.get(f"{locked.url}/api/queue") as r:  # the cookie now authenticates
                assert r.status == 200
            async with browser.ws_connect(f"{locked.ws_url}?clientId=cookie-client") as ws:
                assert (await ws.receive_json())["type"] == "status"
        async with aiohttp.ClientSession() as client:
            async with client.ws_connect(f"{locked.ws_url}?clientId=q&token={TOKEN}") as ws:
                assert (await ws.receive_json())["type"] == "status"
            async with client.post(f"{locked.url}/prompt", json={"prompt": add_prompt(2)},
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
    run(main())


def test_cross_site_requests_are_refused(live):
    """A5-A8, A10-A12."""
    body = json.dumps({"prompt": add_prompt(3)}).encode()
    same_origin = live.url

    async def main():
        async with aiohttp.ClientSession() as session:
            before = await pending_count(session, live.url)
            refusals = [
                ({"Origin": "https://evil.example"}, 403),
                ({"Origin": "null"}, 403),
                ({"Origin": f"http://127.0.0.1:{live.port + 1}"}, 403),
                ({"Origin": f"https://127.0.0.1:{live.port}"}, 403),  # issue 13.11: same host and port, not scheme
                ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}, 403),
                ({"Host": "attacker.example"}, 403),
                ({"Host": f"attacker.example:{live.port}", "Origin": f"http://attacker.example:{live.port}"}, 403),
            ]
            for headers, status in refusals:
                async with session.post(f"{live.url}/prompt", data=body,
                                        headers={"Content-Type": "application/json", **headers}) as response:
                    assert_clean_error(response.status, await response.text(), (status,))
            for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
                async with session.post(f"{live.url}/prompt", data=body,
                                        headers={"Content-Type": content_type, "Origin": same_origin}) as r:
                    assert r.status == 415
            assert await pending_count(session, live.url) == before
            # scripts that send no Origin (ComfyUI's urllib example sends a form content type) still work
            async with session.post(f"{live.url}/prompt", data=body,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                assert r.status == 200
            async with session.post(f"{live.url}/prompt", data=body,
                                    headers={"Content-Type": "application/json", "Origin": same_origin}) as r:
                assert r.status == 200
            async with session.get(f"{live.url}/", headers={"Sec-Fetch-Site": "cross-site",
                                                             "Sec-Fetch-Mode": "navigate"}) as r:
                assert r.status == 200  # a link from elsewhere may open the editor
            async with session.options(f"{live.url}/prompt", headers={
                    "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}) as r:
                assert r.status in (403, 405) and "Access-Control-Allow-Origin" not in r.headers
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{live.ws_url}?clientId=x", origin="https://evil.example")
            assert refused.value.status == 403
            async with session.ws_connect(f"{live.ws_url}?clientId=x", origin=same_origin) as ws:
                assert (await ws.receive_json())["type"] == "status"
    run(main())


def test_errors_carry_no_paths_or_tracebacks(live):
    """H5 and §1.7: error bodies and validation messages never show server paths."""
    async def main():
        async with aiohttp.ClientSession() as session:
            prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
                      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
            status, text, _ = await post_raw(session, f"{live.url}/prompt", json.dumps({"prompt": prompt}).encode())
            assert_clean_error(status, text, (400,))
            assert str(os.getcwd()) not in text
            async with session.get(f"{live.url}/system_stats") as response:
                text = await response.text()
            assert "/tmp/" not in text and "/work/" not in text
    run(main())


def test_loom_serve_allowed_host_and_origin_flags(tmp_path):
    """Behind a reverse proxy: `--allowed-host` / `--allowed-origin` widen the checks, nothing else does."""
    def status(url: str, **headers: str) -> int:
        request = urllib.request.Request(url + "/api/health", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    server = ServerProcess(tmp_path, "--allowed-host", "loom.proxy.example",
                           "--allowed-origin", "https://loom.proxy.example")
    try:
        assert status(server.url, Host="loom.proxy.example") == 200
        assert status(server.url, Host="loom.proxy.example", Origin="https://loom.proxy.example") == 200
        assert status(server.url, Host="evil.example") == 403
        assert status(server.url, Host="loom.proxy.example", Origin="https://evil.example") == 403
    finally:
        server.terminate()


def test_non_finite_numbers_are_refused_where_json_is_accepted(live):
    """Issue 13.6/13.7: 1e999 parses as infinity. /settings must not store it (GET /settings would then send
    JSON that browsers reject), and a prompt with it in extra_data or in an input its node does not read
    must get a 400 that says where, not a 500; a used input keeps its per-node error."""
    async def main():
        async with aiohttp.ClientSession() as session:
            status, text, _ = await post_raw(session, f"{live.url}/settings/x", b"1e999")
            assert_clean_error(status, text, (400,))
            assert "finite" in text
            async with session.get(f"{live.url}/settings") as response:
                assert response.status == 200
                assert "x" not in json.loads(await response.text(), parse_constant=lambda c: pytest.fail(c))
            used = {"1": {"class_type": "TestAdd", "inputs": {"a": 1, "b": 1}},
                    "9": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
            body = json.dumps({"prompt": used, "extra_data": {"n": 1}}).replace('"n": 1', '"n": 1e999')
            status, text, _ = await post_raw(session, f"{live.url}/prompt", body.encode())
            assert_clean_error(status, text, (400,))
            assert "extra_data/n" in text
            unused = json.loads(json.dumps(used))
            unused["1"]["inputs"]["spare"] = 7
            body = json.dumps({"prompt": unused}).replace('"spare": 7', '"spare": 1e999')
            status, text, _ = await post_raw(session, f"{live.url}/prompt", body.encode())
            assert_clean_error(status, text, (400,))
            assert "node 1 input 'spare'" in text
            assert await pending_count(session, live.url) == 0
    run(main())

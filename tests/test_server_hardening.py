"""Issue 13's second half against a real server: big prompts off the event loop, hardening headers on every
response (errors included), odd uploads and /view options as 4xx, a sweep of every route with malformed
input (never a 5xx), both loopbacks listening, and the resource budget.
"""
from __future__ import annotations

import asyncio
import io
import json
import random
import socket
import threading
import urllib.parse

import aiohttp
import pytest
from PIL import Image

from tests.fixtures_server import LiveServer, ServerProcess, run_async

HARDENING = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy")


@pytest.fixture(scope="module")
def live(tmp_path_factory, registry):
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig

    previous = folders.current()
    base = tmp_path_factory.mktemp("hardening_base")
    folders.configure(base)
    server = LiveServer(ServerConfig(registry=registry, max_prompt_bytes=4 * 1024 * 1024))
    yield server
    server.close()
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


def assert_clean_error(status: int, body: str, expected: tuple[int, ...]) -> None:
    assert status in expected, (status, body)
    assert "Traceback" not in body and "/work/" not in body and "/tmp/" not in body, body


def chain_prompt(nodes: int) -> dict:
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}}}
    for index in range(2, nodes):
        prompt[str(index)] = {"class_type": "TestAdd", "inputs": {"a": [str(index - 1), 0], "b": 1}}
    prompt[str(nodes)] = {"class_type": "TestOutput", "inputs": {"value": [str(nodes - 1), 0]}}
    return prompt


# -------------------------------------------------------------------------------------------------
# 13.3: big prompts are decoded in small steps, off the loop and outside the queue's lock
# -------------------------------------------------------------------------------------------------

def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.randint(-10**12, 10**12)
    if kind == 1:
        return rng.random() * 10 ** rng.randint(-5, 5)
    if kind == 2:
        return "".join(rng.choice('ab"\\\u00e9\u2028\n\t{}[],: ') for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return []
    if kind in (5, 6):
        quote = '"' if rng.random() < 0.1 else ""
        return {f"k{rng.randrange(5)}{quote}": _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(5))]


def test_json_chunked_is_the_json_module_in_small_steps():
    from loom.server import json_chunked

    rng = random.Random(13)
    for _ in range(400):
        value = _random_json(rng)
        for spaced in (False, True):
            text = json.dumps(value, indent=1 if spaced else None)
            assert json_chunked.loads(text) == json.loads(text)
        for depth in (0, 1, 2, 5):
            assert json_chunked.dumps(value, depth=depth) == json.dumps(value, separators=(",", ":"))
            assert json_chunked.dumps(value, depth=depth, separators=(", ", ": ")) == json.dumps(value)
    for bad in ('{', '{"a"', '{"a":}', '{"a":1,}', '[1,]', '{"a":1 "b":2}', '[1] x', '', '{a:1}', '[1 2]',
                '{"a": [1, {"b": }]}', ' {"a": 1} }'):
        with pytest.raises(json.JSONDecodeError) as ours:
            json_chunked.loads(bad)
        with pytest.raises(json.JSONDecodeError) as theirs:
            json.loads(bad)
        assert str(ours.value) == str(theirs.value), bad
    with pytest.raises(ValueError):
        json_chunked.dumps({"x": float("inf")})


def test_a_big_prompt_is_parsed_off_the_event_loop(live, monkeypatch):
    """The body of a big POST /prompt is decoded in a worker thread, not on the loop that serves everyone."""
    from loom.server import json_chunked

    decoded_on: list[bool] = []
    original = json_chunked.loads

    def spying_loads(text, **options):
        try:
            asyncio.get_running_loop()
            decoded_on.append(True)
        except RuntimeError:
            decoded_on.append(False)
        return original(text, **options)

    monkeypatch.setattr(json_chunked, "loads", spying_loads)
    body = json.dumps({"prompt": chain_prompt(5000)}).encode()
    assert len(body) > 256 * 1024

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{live.url}/prompt", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                assert response.status == 200, await response.text()
                return (await response.json())["prompt_id"]
    prompt_id = run_async(main())
    assert decoded_on and decoded_on[0] is False  # the request body: in a thread without an event loop
    assert not any(decoded_on), "a prompt was decoded on an event loop thread"
    assert prompt_id


def test_the_queue_lock_is_free_while_a_prompt_is_encoded_or_decoded(tmp_path, monkeypatch):
    """put() encodes and get() decodes outside the queue's lock: status reads never wait for a big prompt."""
    from loom.server import json_chunked
    from loom.server.queue import PromptQueue

    queue = PromptQueue(tmp_path / "q.sqlite3")
    inside, release = threading.Event(), threading.Event()
    original_dumps, original_loads = json_chunked.dumps, json_chunked.loads

    def slow(original):
        def coder(value, **options):
            if isinstance(value, (dict, str)) and "big" in str(value)[:40]:
                inside.set()
                release.wait(10)
            return original(value, **options)
        return coder

    def reads_while_coding(action) -> bool:
        inside.clear()
        release.clear()
        worker = threading.Thread(target=action)
        worker.start()
        assert inside.wait(10)
        answered = threading.Event()
        reader = threading.Thread(target=lambda: (queue.remaining(), answered.set()))
        reader.start()
        ok = answered.wait(2)
        release.set()
        worker.join(10)
        reader.join(10)
        return ok

    monkeypatch.setattr(json_chunked, "dumps", slow(original_dumps))
    assert reads_while_coding(lambda: queue.put("p1", {"big": {"class_type": "X", "inputs": {}}}, {}, ["big"]))
    monkeypatch.setattr(json_chunked, "dumps", original_dumps)
    monkeypatch.setattr(json_chunked, "loads", slow(original_loads))
    assert reads_while_coding(lambda: queue.get(timeout=1))
    queue.close()


# -------------------------------------------------------------------------------------------------
# 13.8: the hardening headers on every response, errors included
# -------------------------------------------------------------------------------------------------

def test_error_responses_carry_the_hardening_headers(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            requests = [("GET", "/api/health", None), ("GET", "/", None), ("GET", "/no/such/file.js", None),
                        ("POST", "/prompt", b"{"), ("POST", "/prompt", b"[]"), ("PUT", "/prompt", b"{}"),
                        ("GET", "/view?filename=missing.png", None), ("GET", "/history?max_items=x", None),
                        ("POST", "/upload/image", b"x"), ("GET", "/models/nope", None),
                        ("POST", "/prompt", b"x" * (5 * 1024 * 1024))]
            for method, path, body in requests:
                async with session.request(method, live.url + path, data=body,
                                           headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    missing = [h for h in HARDENING if h not in response.headers]
                    assert not missing, (method, path, response.status, missing)
                    assert response.headers["X-Content-Type-Options"] == "nosniff"
    run_async(main())


# -------------------------------------------------------------------------------------------------
# 13.6: odd uploads and /view options are 4xx
# -------------------------------------------------------------------------------------------------

async def _upload(session, url: str, data: bytes, filename: str) -> tuple[int, str]:
    """A multipart upload written by hand: aiohttp's client refuses control bytes in a filename, a hostile
    client does not."""
    body = (b"--loomboundary\r\nContent-Disposition: form-data; name=\"image\"; filename=\""
            + filename.encode("utf-8", "surrogateescape") + b"\"\r\nContent-Type: image/png\r\n\r\n" + data
            + b"\r\n--loomboundary--\r\n")
    async with session.post(f"{url}/upload/image", data=body,
                            headers={"Content-Type": "multipart/form-data; boundary=loomboundary"}) as response:
        return response.status, await response.text()


def test_uploads_of_odd_but_valid_images_and_names(live):
    from loom.nodes.kernel import folders

    tiff32 = io.BytesIO()
    Image.frombytes("I", (4, 3), bytes(range(48))).save(tiff32, format="TIFF")
    tiff_float = io.BytesIO()
    Image.new("F", (4, 3), 0.5).save(tiff_float, format="TIFF")
    png = io.BytesIO()
    Image.new("RGB", (4, 3), (9, 8, 7)).save(png, format="PNG")

    async def main():
        async with aiohttp.ClientSession() as session:
            status, text = await _upload(session, live.url, tiff32.getvalue(), "deep.tiff")
            assert status == 200, text
            saved = folders.input_dir() / json.loads(text)["name"]
            with Image.open(saved) as image:
                assert image.size == (4, 3)
            status, text = await _upload(session, live.url, tiff_float.getvalue(), "float.tiff")
            assert status == 200, text
            for name in ("bad\x01name.png", "tab\tname.png", "nul\x00.png", "\x7f.png"):
                status, text = await _upload(session, live.url, png.getvalue(), name)
                assert_clean_error(status, text, (200, 400))
                if status == 200:
                    stored = json.loads(text)["name"]
                    assert not any(ord(c) < 32 or ord(c) == 127 for c in stored), stored
                    assert (folders.input_dir() / stored).is_file()
    run_async(main())


def test_view_transforms_of_a_file_that_is_not_an_image(live):
    from loom.nodes.kernel import folders

    (folders.output_dir() / "fake.png").write_bytes(b"this is not a png")
    (folders.output_dir() / "notes.txt").write_text("hello")

    async def main():
        async with aiohttp.ClientSession() as session:
            for query in ("filename=fake.png&preview=webp;90", "filename=fake.png&channel=rgb",
                          "filename=fake.png&channel=a", "filename=notes.txt&preview=webp;90",
                          "filename=notes.txt&channel=rgb", "filename=fake.png&preview=jpeg;x",
                          "filename=fake.png&preview=gif"):
                async with session.get(f"{live.url}/view?{query}&type=output") as response:
                    text = await response.text(errors="replace")
                    assert response.status < 500, (query, response.status, text)
                    if "notes.txt" not in query:
                        assert_clean_error(response.status, text, (400, 415))
    run_async(main())


# -------------------------------------------------------------------------------------------------
# 13.6: every route, malformed input, never a 5xx
# -------------------------------------------------------------------------------------------------

JUNK_SEGMENTS = ("x", "..", "%2e%2e%2f%2e%2e", "%00", "a" * 3000, "%ff%fe", "1e999", "-1")
JUNK_QUERIES = ("max_items=99999999999999999999999999999999999999999999", "offset=-99999999999999999999",
                "max_items=abc", "filename=%00", "filename=../../etc/passwd", "type=../..&filename=a.png",
                "subfolder=%2e%2e&filename=a.png", "preview=webp;90&filename=x", "channel=zz&filename=x",
                "filename=" + "a" * 5000, "dir=../../", "token=%ff")
JUNK_BODIES = (b"", b"{", b"[]", b"null", b"1e999", b'{"prompt": 1e999}', b'{"delete": 5}',
               b'{"clear": "yes", "delete": [{"a": 1}]}', b'{"prompt_id": ["x"]}', b"\xff\xfe\x00",
               b'{"prompt": {"1": {"class_type": 5}}}', b'{"number": "NaN"}', b'[' * 100_000,
               b'{"unload_models": {"x": 1}}', b'"' + b"\\u" * 10 + b'"')


def test_every_route_survives_malformed_input(live):
    from loom.server.app import server_of

    routes = sorted({(route.method, route.resource.canonical) for route in live.app.router.routes()
                     if route.resource is not None and route.method != "HEAD"})
    assert len(routes) > 30

    failures: list[tuple] = []

    async def one(session, method, path, query, body, content_type):
        url = live.url + path + ("?" + query if query else "")
        async with session.request(method, url, data=body, headers={"Content-Type": content_type}) as response:
            text = await response.text(errors="replace")
            if response.status >= 500 or "Traceback" in text:
                failures.append((method, path[:80], query[:80], body[:40] if body else body, response.status,
                                 text[:200]))

    async def main():
        async with aiohttp.ClientSession() as session:
            for method, template in routes:
                segments = JUNK_SEGMENTS if "{" in template else ("",)
                for segment in segments:
                    path = template
                    if "{" in template:
                        path = template.split("{")[0] + segment
                        if "}" in template.split("{", 1)[1]:
                            path += template.split("}", 1)[1]
                    if path == "/ws" or path == "/api/ws":
                        continue  # the WebSocket handshake is tested in the WebSocket tests
                    for query in ("",) + (JUNK_QUERIES if method == "GET" else ()):
                        await one(session, method, path, query, None, "application/json")
                    if method == "POST":
                        for body in JUNK_BODIES:
                            await one(session, method, path, "", body, "application/json")
                        await one(session, method, path, "", b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x")
                        await one(session, method, path, "", b"a=b", "application/x-www-form-urlencoded")
        # the server is still healthy and nothing junk was queued
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{live.url}/api/health") as response:
                assert response.status == 200
    run_async(main())
    assert not failures, "\n".join(map(repr, failures[:30]))
    assert server_of(live.app).worker.alive


# -------------------------------------------------------------------------------------------------
# 13.11: both loopbacks
# -------------------------------------------------------------------------------------------------

def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_loom_serve_listens_on_both_loopbacks(tmp_path):
    if not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1) to listen on")
    server = ServerProcess(tmp_path)
    try:
        port = urllib.parse.urlsplit(server.url).port
        for host in ("127.0.0.1", "[::1]"):
            async def main(host=host):
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"http://{host}:{port}/api/health") as response:
                        assert response.status == 200, host
            run_async(main())
    finally:
        assert server.terminate() == 0


# -------------------------------------------------------------------------------------------------
# 13.4: the resource budget
# -------------------------------------------------------------------------------------------------

def _post_prompt(url: str, prompt: dict) -> tuple[int, dict]:
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/prompt", json={"prompt": prompt}) as response:
                return response.status, await response.json()
    return run_async(main())


def _queue_length(url: str) -> int:
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/queue") as response:
                body = await response.json()
                return len(body["queue_pending"]) + len(body["queue_running"])
    return run_async(main())


def test_the_default_budget_refuses_a_latent_no_machine_holds(live):
    """EmptyLatentImage 16384x16384 x 4096 (~275 GB) is valid for the schema, refused by the budget."""
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 16384, "height": 16384, "batch_size": 4096}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    before = _queue_length(live.url)
    status, body = _post_prompt(live.url, prompt)
    assert status == 400, body
    errors = body["node_errors"]["1"]["errors"]
    assert body["node_errors"]["1"]["class_type"] == "EmptyLatentImage"
    assert body["node_errors"]["1"]["dependent_outputs"] == ["2"]
    assert {e["type"] for e in errors} == {"value_exceeds_budget"}
    pixels = next(e for e in errors if e["message"].startswith("Image too large"))
    assert pixels["extra_info"]["input_name"] == "batch_size"
    assert "16384x16384 x 4096 (batch_size)" in pixels["details"] and "--max-pixels" in pixels["details"]
    assert _queue_length(live.url) == before
    fine = {**prompt, "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}}}
    status, body = _post_prompt(live.url, fine)
    assert status == 200, body


def test_loom_serve_budget_flags(tmp_path):
    server = ServerProcess(tmp_path, "--max-steps", "3", "--max-batch", "2", "--max-pixels", "10000")
    try:
        sleepy = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
                  "2": {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": 0.0, "steps": 4}},
                  "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
        status, body = _post_prompt(server.url, sleepy)
        assert status == 400, body
        (problem,) = body["node_errors"]["2"]["errors"]
        assert problem["extra_info"]["input_name"] == "steps" and "at most 3" in problem["details"]
        latent = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
                  "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
        status, body = _post_prompt(server.url, latent)
        assert status == 400, body
        messages = sorted(e["message"] for e in body["node_errors"]["1"]["errors"])
        assert messages == ["Batch too large", "Image too large for this server"]
        latent["1"]["inputs"]["batch_size"] = 2
        status, body = _post_prompt(server.url, latent)
        assert status == 200, body
        assert _queue_length(server.url) <= 1
    finally:
        assert server.terminate() == 0


def test_budget_rule_against_free_memory():
    from loom.server.budget import ResourceBudget

    budget = ResourceBudget(max_pixels=0, memory_fraction=0.5)
    values = {"width": 1024, "height": 1024, "batch_size": 8}
    needed = 1024 * 1024 * 8 * 12
    assert budget.problems(values, available_memory=needed * 2) == []
    (problem,) = budget.problems(values, available_memory=needed)
    assert problem[0] == "batch_size" and problem[1] == "Image too large for the free memory"
    assert budget.problems(values, available_memory=None) == []
    assert ResourceBudget(max_pixels=0, max_batch=0, max_steps=0, memory_fraction=0).problems(
        {"width": 10**6, "height": 10**6, "batch_size": 10**6, "steps": 10**9}, 1) == []
    assert budget.problems({"width": 64, "height": True}, 1) == []  # not ints: the schema check reports them


def test_loom_serve_flags_reach_the_server_config():
    from loom.server.budget import ResourceBudget
    from loom.server.cli import build_parser
    from loom.server.serve import server_config

    args = build_parser().parse_args(["serve", "--preview-method", "none", "--max-steps", "3", "--max-batch", "0",
                                      "--max-pixels", "4096"])
    config = server_config(args, registry=None)
    assert config.preview_method == "none"
    assert config.budget == ResourceBudget(max_pixels=4096, max_batch=0, max_steps=3)
    defaults = server_config(build_parser().parse_args(["serve"]))
    assert defaults.preview_method is None and defaults.budget == ResourceBudget()
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8188)


def test_an_upload_to_a_full_disk_is_a_507_and_leaves_nothing(live, monkeypatch):
    """X12 for uploads: the disk filling up is the server's trouble, said as such, not a 500."""
    import errno
    import os as os_module

    from loom.nodes.kernel import folders

    real_write = os_module.write

    def full_disk(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    png = io.BytesIO()
    Image.new("RGB", (6, 6), (1, 2, 3)).save(png, format="PNG")
    before = sorted(p.name for p in folders.input_dir().iterdir())
    monkeypatch.setattr(os_module, "write", full_disk)

    async def main():
        async with aiohttp.ClientSession() as session:
            return await _upload(session, live.url, png.getvalue(), "full-disk.png")
    status, text = run_async(main())
    monkeypatch.setattr(os_module, "write", real_write)
    assert status == 507, text
    assert "no space left on device" in text and "Traceback" not in text
    assert sorted(p.name for p in folders.input_dir().iterdir()) == before

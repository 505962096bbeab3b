"""The HTTP/WebSocket API against a real server on a loopback port, with plain aiohttp clients.

Covers the headless client recipe (ComfyUI's §1.6), every route's happy path, interrupt and cancel,
per-client event routing, and the faults a running server must survive (node exception, interrupt,
client disconnect).
"""
from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.fixtures_server import (LiveServer, add_prompt, new_client_id, queue_prompt, run_async,
                                   send_feature_flags, wait_done, wait_history)


@pytest.fixture(scope="module")
def live(tmp_path_factory, registry):
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig

    previous = folders.current()
    base = tmp_path_factory.mktemp("server_base")
    folders.configure(base)
    server = LiveServer(ServerConfig(registry=registry, upload=_small_upload_limits()))
    yield server
    server.close()
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


def _small_upload_limits():
    from loom.server.security import UploadLimits
    return UploadLimits(max_bytes=2 * 1024 * 1024, max_pixels=4096 * 4096)


def run(coro):
    return run_async(coro)


def png_bytes(size=(16, 12), color=(200, 30, 60, 255), text: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    Image.new("RGBA", size, color).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


async def upload(session, base, data: bytes, filename="pic.png", **fields) -> aiohttp.ClientResponse:
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("image", data, filename=filename, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return await session.post(f"{base}/upload/image", data=form)


# -------------------------------------------------------------------------------------------------
# The client recipe, end to end
# -------------------------------------------------------------------------------------------------

def test_client_recipe_test_nodepack(live):
    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                hello = await ws.receive_json()
                assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                            "sid": client_id}}
                queued = await queue_prompt(session, live.url, add_prompt(41, sleep=0.05, steps=3), client_id)
                assert queued["node_errors"] == {} and isinstance(queued["number"], int)
                seen = await wait_done(ws, queued["prompt_id"])
            types = [m["type"] for m in seen]
            for expected in ("execution_start", "execution_cached", "executing", "progress", "executed",
                             "execution_success"):
                assert expected in types, types
            assert types.index("execution_success") < len(types) - 1  # executing{node:null} comes last
            executed = next(m["data"] for m in seen if m["type"] == "executed")
            assert executed == {"node": "9", "display_node": "9", "output": {"text": ["41"]},
                                "prompt_id": queued["prompt_id"]}
            progress = [m["data"] for m in seen if m["type"] == "progress"]
            assert [p["value"] for p in progress] == [1, 2, 3] and progress[0]["max"] == 3
            # history is written before the client hears that the prompt ended
            async with session.get(f"{live.url}/history/{queued['prompt_id']}") as response:
                history = await response.json()
            entry = history[queued["prompt_id"]]
            assert entry["outputs"] == {"9": {"text": ["41"]}}
            assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
            assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                   "execution_success"]
            number, prompt_id, prompt, extra, outputs = entry["prompt"]
            assert prompt_id == queued["prompt_id"] and outputs == ["9"] and extra["client_id"] == client_id
    run(main())


def test_client_recipe_upload_load_save_view(live):
    """Upload an image, LoadImage -> SaveImage with a workflow in extra_pnginfo, fetch the PNG with /view."""
    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            response = await upload(session, live.url, png_bytes((20, 10)), "source image.png")
            uploaded = await response.json()
            assert response.status == 200, uploaded
            assert uploaded == {"name": "source image.png", "subfolder": "", "type": "input"}
            workflow = {"nodes": [], "links": [], "version": 0.4, "marker": "recipe"}
            prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": uploaded["name"]}},
                      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                                  "filename_prefix": "recipe/out"}}}
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                queued = await queue_prompt(session, live.url, prompt, client_id,
                                            extra_data={"extra_pnginfo": {"workflow": workflow}})
                await wait_done(ws, queued["prompt_id"])
            entry = await wait_history(session, live.url, queued["prompt_id"])
            assert entry["status"]["status_str"] == "success", entry["status"]
            image = entry["outputs"]["2"]["images"][0]
            assert image["type"] == "output" and image["subfolder"] == "recipe"
            async with session.get(f"{live.url}/view", params=image | {}) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "image/png"
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert "sandbox" in response.headers["Content-Security-Policy"]
                data = await response.read()
            saved = Image.open(io.BytesIO(data))
            assert saved.size == (20, 10)
            assert json.loads(saved.info["workflow"])["marker"] == "recipe"
            assert "1" in json.loads(saved.info["prompt"])
            params = {"filename": image["filename"], "subfolder": "recipe", "type": "output",
                      "preview": "webp;50"}
            async with session.get(f"{live.url}/api/view", params=params) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "image/webp"
                assert Image.open(io.BytesIO(await response.read())).format == "WEBP"
            for channel, mode in (("rgb", "RGB"), ("a", "RGBA")):
                params = {"filename": image["filename"], "subfolder": "recipe", "channel": channel}
                async with session.get(f"{live.url}/view", params=params) as response:
                    assert response.status == 200
                    assert Image.open(io.BytesIO(await response.read())).mode == mode
    run(main())


# -------------------------------------------------------------------------------------------------
# Routes
# -------------------------------------------------------------------------------------------------

def test_read_only_routes(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            for prefix in ("", "/api"):
                async with session.get(f"{live.url}{prefix}/object_info") as response:
                    info = await response.json()
                assert info["TestAdd"]["input_order"] == {"required": ["a", "b"]}
                assert info["TestOutput"]["output_node"] is True
                async with session.get(f"{live.url}{prefix}/object_info/TestChoice") as response:
                    one = await response.json()
                assert one["TestChoice"]["input"]["required"]["choice"][0] == ["alpha", "beta", "gamma"]
                async with session.get(f"{live.url}{prefix}/object_info/NoSuchNode") as response:
                    assert await response.json() == {}
                async with session.get(f"{live.url}{prefix}/prompt") as response:
                    assert "queue_remaining" in (await response.json())["exec_info"]
                async with session.get(f"{live.url}{prefix}/models") as response:
                    assert "checkpoints" in await response.json()
                async with session.get(f"{live.url}{prefix}/models/checkpoints") as response:
                    assert isinstance(await response.json(), list)
                async with session.get(f"{live.url}{prefix}/models/nonsense") as response:
                    assert response.status == 404
                async with session.get(f"{live.url}{prefix}/embeddings") as response:
                    assert isinstance(await response.json(), list)
                async with session.get(f"{live.url}{prefix}/system_stats") as response:
                    stats = await response.json()
                assert stats["system"]["python_version"] and stats["devices"][0]["type"] in ("cpu", "cuda")
                assert "/" not in json.dumps(stats["system"]["argv"])  # no server paths
                async with session.get(f"{live.url}{prefix}/features") as response:
                    assert (await response.json())["supports_preview_metadata"] is True
            async with session.get(f"{live.url}/api/health") as response:
                assert response.status == 200 and (await response.json())["status"] == "ok"
            async with session.get(f"{live.url}/api/workflows/default") as response:
                assert response.status == 200 and isinstance((await response.json())["nodes"], list)
            async with session.get(f"{live.url}/api/ready") as response:
                assert response.status == 200 and (await response.json())["ready"] is True
    run(main())


def test_models_listing_shows_files(live):
    from loom.nodes.kernel import folders
    checkpoint = folders.current().model_paths("checkpoints")[0] / "sub" / "tiny.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"x")
    embedding = folders.current().model_paths("embeddings")[0] / "style.pt"
    embedding.write_bytes(b"x")

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{live.url}/models/checkpoints") as response:
                assert "sub/tiny.safetensors" in await response.json()
            async with session.get(f"{live.url}/embeddings") as response:
                assert "style" in await response.json()
    try:
        run(main())
    finally:
        checkpoint.unlink()
        embedding.unlink()


def test_queue_history_routes(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            # hold the worker on a slow prompt so the next ones stay pending
            blocker = await queue_prompt(session, live.url, add_prompt(1, sleep=1.0, steps=50))
            a = await queue_prompt(session, live.url, add_prompt(2))
            b = await queue_prompt(session, live.url, add_prompt(3), front=True)
            c = await queue_prompt(session, live.url, add_prompt(4), number=-1000.5)
            async with session.get(f"{live.url}/queue") as response:
                queue = await response.json()
            pending_ids = [item[1] for item in queue["queue_pending"]]
            assert pending_ids == [c["prompt_id"], b["prompt_id"], a["prompt_id"]]  # lowest number first
            assert queue["queue_pending"][0][0] == -1000.5
            assert [item[1] for item in queue["queue_running"]] == [blocker["prompt_id"]]
            async with session.post(f"{live.url}/api/queue", json={"delete": [a["prompt_id"]]}) as response:
                assert response.status == 200
            async with session.post(f"{live.url}/queue", json={"clear": True}) as response:
                assert response.status == 200
            async with session.get(f"{live.url}/api/queue") as response:
                assert (await response.json())["queue_pending"] == []
            async with session.post(f"{live.url}/interrupt", json={"prompt_id": "not-running"}) as response:
                assert (await response.json())["interrupted"] is False
            async with session.post(f"{live.url}/api/interrupt") as response:  # no body: global interrupt
                assert (await response.json())["interrupted"] is True
            entry = await wait_history(session, live.url, blocker["prompt_id"])
            assert entry["status"]["state"] == "interrupted"
            assert entry["status"]["messages"][-1][0] == "execution_interrupted"

            done = [await queue_prompt(session, live.url, add_prompt(100 + i)) for i in range(3)]
            for item in done:
                await wait_history(session, live.url, item["prompt_id"])
            async with session.get(f"{live.url}/history", params={"max_items": "2"}) as response:
                last_two = list(await response.json())
            assert last_two == [done[1]["prompt_id"], done[2]["prompt_id"]]
            async with session.get(f"{live.url}/history") as response:
                everything = list(await response.json())
            async with session.get(f"{live.url}/history", params={"offset": "1", "max_items": "1"}) as response:
                assert list(await response.json()) == everything[1:2]
            # issue 13.6: past SQLite's 64-bit integers a number still means "more than there is", not a 500
            for params, expected in (({"max_items": "99999999999999999999"}, everything),
                                     ({"offset": "99999999999999999999"}, []),
                                     ({"max_items": "-99999999999999999999"}, [])):
                async with session.get(f"{live.url}/history", params=params) as response:
                    assert response.status == 200 and list(await response.json()) == expected, params
            async with session.get(f"{live.url}/history", params={"max_items": "9" * 50}) as response:
                assert response.status == 400 and "max_items" in (await response.json())["error"]["message"]
            async with session.post(f"{live.url}/history", json={"delete": [done[0]["prompt_id"]]}) as response:
                assert response.status == 200
            async with session.get(f"{live.url}/history/{done[0]['prompt_id']}") as response:
                assert await response.json() == {}
            async with session.post(f"{live.url}/api/history", json={"clear": True}) as response:
                assert response.status == 200
            async with session.get(f"{live.url}/api/history") as response:
                assert await response.json() == {}
            async with session.post(f"{live.url}/free", json={"unload_models": True, "free_memory": True}) as r:
                assert r.status == 200
    run(main())


def test_cancel_queued_and_running_by_id(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            running = await queue_prompt(session, live.url, add_prompt(7, sleep=2.0, steps=100))
            queued = await queue_prompt(session, live.url, add_prompt(8, sleep=0.01))
            other = await queue_prompt(session, live.url, add_prompt(9))
            async with session.post(f"{live.url}/api/queue/{queued['prompt_id']}/cancel") as response:
                assert (await response.json())["state"] == "cancelled"
            entry = await wait_history(session, live.url, queued["prompt_id"])
            assert entry["status"]["state"] == "cancelled"
            while True:  # wait until the slow one runs
                async with session.get(f"{live.url}/queue") as response:
                    if (await response.json())["queue_running"]:
                        break
                await asyncio.sleep(0.02)
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with session.delete(f"{live.url}/api/prompt/{running['prompt_id']}") as response:
                assert (await response.json())["state"] == "interrupting"
            entry = await wait_history(session, live.url, running["prompt_id"])
            assert entry["status"]["state"] == "interrupted"
            assert loop.time() - started < 2.0
            assert (await wait_history(session, live.url, other["prompt_id"]))["status"]["state"] == "success"
            async with session.post(f"{live.url}/api/queue/{running['prompt_id']}/cancel") as response:
                assert response.status == 409
            async with session.post(f"{live.url}/api/queue/no-such-prompt/cancel") as response:
                assert response.status == 404
            # an interrupted prompt can be queued again
            async with session.post(f"{live.url}/api/history/{running['prompt_id']}/requeue") as response:
                again = await response.json()
            assert again["prompt_id"] != running["prompt_id"]
            async with session.post(f"{live.url}/api/queue/{again['prompt_id']}/cancel") as response:
                assert response.status == 200
    run(main())


def test_two_clients_see_only_their_own_events(live):
    async def main():
        a_id, b_id = new_client_id(), new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={a_id}") as ws_a, \
                    session.ws_connect(f"{live.ws_url}?clientId={b_id}") as ws_b, \
                    session.ws_connect(f"{live.ws_url}?clientId={a_id}") as ws_thief:
                await ws_a.receive_json()
                await ws_b.receive_json()
                thief_hello = await ws_thief.receive_json()
                assert thief_hello["data"]["sid"] not in (a_id, b_id)  # an id in use is not taken over
                pa = await queue_prompt(session, live.url, add_prompt(501, sleep=0.05), a_id)
                pb = await queue_prompt(session, live.url, add_prompt(502, sleep=0.05), b_id)
                anonymous = await queue_prompt(session, live.url, add_prompt(503, sleep=0.05))
                seen_a = await wait_done(ws_a, pa["prompt_id"])
                seen_b = await wait_done(ws_b, pb["prompt_id"])
                await wait_history(session, live.url, anonymous["prompt_id"])
                await asyncio.sleep(0.2)
                thief = []
                while True:
                    try:
                        thief.append(await ws_thief.receive_json(timeout=0.2))
                    except asyncio.TimeoutError:
                        break
            for seen, mine in ((seen_a, pa["prompt_id"]), (seen_b, pb["prompt_id"])):
                for message in seen:
                    if message["type"] == "status":
                        assert set(message["data"]) == {"status"}  # only queue counts
                        continue
                    assert message["data"]["prompt_id"] == mine, message
            assert {m["type"] for m in thief} <= {"status"}
    run(main())


def test_preview_frames_legacy_and_with_metadata(live):
    """A node reporting a preview image reaches only its client, as type 1 or type 4 frames."""
    from loom.server.clients import preview_frame
    jpeg = b"\xff\xd8fakejpeg"
    legacy = preview_frame(jpeg, None)
    assert legacy[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x01" and legacy[8:] == jpeg
    framed = preview_frame(jpeg, {"node_id": "3", "prompt_id": "p", "image_type": "image/jpeg"})
    assert framed[:4] == b"\x00\x00\x00\x04"
    length = int.from_bytes(framed[4:8], "big")
    assert json.loads(framed[8:8 + length])["node_id"] == "3" and framed[8 + length:] == jpeg

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId=viewer-new") as modern, \
                    session.ws_connect(f"{live.ws_url}?clientId=viewer-old") as old:
                await modern.receive_json()
                await old.receive_json()
                reply = await send_feature_flags(modern, {"supports_preview_metadata": True})
                assert reply["data"]["supports_preview_metadata"]
                await asyncio.sleep(0.05)
                image = Image.new("RGB", (64, 64), (10, 20, 30))
                server = live.server
                for client_id in ("viewer-new", "viewer-old"):
                    server.worker._send_preview(client_id, {"node": "5", "prompt_id": "pp", "image": image},
                                                [0.0])
                frame_new = await modern.receive_bytes(timeout=5)
                frame_old = await old.receive_bytes(timeout=5)
            assert frame_new[:4] == b"\x00\x00\x00\x04"
            length = int.from_bytes(frame_new[4:8], "big")
            assert json.loads(frame_new[8:8 + length])["prompt_id"] == "pp"
            assert Image.open(io.BytesIO(frame_new[8 + length:])).format == "JPEG"
            assert frame_old[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x01"
            assert Image.open(io.BytesIO(frame_old[8:])).size == (64, 64)
    run(main())


def test_upload_routes(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            data = png_bytes((8, 8))
            first = await (await upload(session, live.url, data, "same.png")).json()
            again = await (await upload(session, live.url, data, "same.png")).json()
            assert first["name"] == again["name"] == "same.png"  # identical content is not duplicated
            other = await (await upload(session, live.url, png_bytes((8, 8), (1, 2, 3, 255)), "same.png")).json()
            assert other["name"] == "same (1).png"
            replaced = await (await upload(session, live.url, png_bytes((9, 9)), "same.png",
                                           overwrite="true")).json()
            assert replaced["name"] == "same.png"
            sub = await (await upload(session, live.url, data, "nested.png", subfolder="a/b", type="temp")).json()
            assert sub == {"name": "nested.png", "subfolder": "a/b", "type": "temp"}
            # mask: the alpha of the uploaded mask goes into the original image
            mask = io.BytesIO()
            Image.new("RGBA", (9, 9), (0, 0, 0, 77)).save(mask, format="PNG")
            form = aiohttp.FormData()
            form.add_field("image", mask.getvalue(), filename="clipspace-mask.png", content_type="image/png")
            form.add_field("original_ref", json.dumps({"filename": "same.png", "type": "input"}))
            async with session.post(f"{live.url}/api/upload/mask", data=form) as response:
                masked = await response.json()
                assert response.status == 200, masked
            async with session.get(f"{live.url}/view", params={"filename": masked["name"], "type": "input"}) as r:
                result = Image.open(io.BytesIO(await r.read()))
            assert result.size == (9, 9) and result.getchannel("A").getextrema() == (77, 77)
    run(main())


def test_concurrent_uploads_under_one_name_keep_every_image(live):
    """Issue 13.2: 20 clients uploading different pictures as race.png at once each get their own name, and
    each name holds that client's picture (choosing the name and writing it are one atomic step)."""
    async def main():
        async with aiohttp.ClientSession() as session:
            colours = [(10 * i, 200 - 5 * i, 7, 255) for i in range(20)]

            async def one(colour):
                async with await upload(session, live.url, png_bytes((6, 6), colour), "race.png") as response:
                    assert response.status == 200
                    return colour, (await response.json())["name"]

            answers = await asyncio.gather(*(one(c) for c in colours))
            assert len({name for _, name in answers}) == 20, answers
            for colour, name in answers:
                async with session.get(f"{live.url}/view", params={"filename": name, "type": "input"}) as r:
                    assert Image.open(io.BytesIO(await r.read())).convert("RGBA").getpixel((0, 0)) == colour, name
    run(main())


def test_write_new_never_gives_one_name_twice(tmp_path):
    import threading

    from loom.nodes.kernel import folders

    target, won = tmp_path / "x.png", []
    barrier = threading.Barrier(8)

    def claim(i):
        barrier.wait()
        if folders.write_new(target, bytes([i]) * 100):
            won.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and target.read_bytes() == bytes(won) * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no temporary file left behind


def test_settings_and_workflow_convert(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{live.url}/api/settings", json={"Comfy.LinkRenderMode": 2}) as response:
                assert response.status == 200
            async with session.post(f"{live.url}/api/settings/Loom.Theme", json="dark") as response:
                assert response.status == 200
            async with session.get(f"{live.url}/api/settings") as response:
                assert await response.json() == {"Comfy.LinkRenderMode": 2, "Loom.Theme": "dark"}
            async with session.get(f"{live.url}/api/settings/Loom.Theme") as response:
                assert await response.json() == "dark"
            workflow = {
                "last_node_id": 2, "last_link_id": 1, "version": 0.4,
                "nodes": [
                    {"id": 1, "type": "TestConstInt", "mode": 0, "inputs": [],
                     "outputs": [{"name": "value", "type": "INT", "links": [1]}], "widgets_values": [12]},
                    {"id": 2, "type": "TestOutput", "mode": 0,
                     "inputs": [{"name": "value", "type": "*", "link": 1}], "outputs": [], "widgets_values": []},
                ],
                "links": [[1, 1, 0, 2, 0, "INT"]], "groups": [], "config": {}, "extra": {},
            }
            async with session.post(f"{live.url}/api/workflow/convert", json=workflow) as response:
                converted = await response.json()
                assert response.status == 200, converted
            assert converted["prompt"]["1"]["inputs"] == {"value": 12}
            assert converted["prompt"]["2"]["inputs"] == {"value": ["1", 0]}
            broken = {"nodes": [{"id": 1, "type": "NoSuchNodeType", "widgets_values": []}], "links": []}
            async with session.post(f"{live.url}/api/workflow/convert", json=broken) as response:
                body = await response.json()
                assert response.status == 400
                assert "Traceback" not in json.dumps(body)
                # problems name the node at fault, so the editor can mark it
                assert body["problems"][0]["node_id"] == "1"
                assert body["problems"][0]["class_type"] == "NoSuchNodeType"
                assert "node 1 (NoSuchNodeType)" in body["error"]["details"]
    run(main())


def test_view_serves_shipped_example_inputs(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{live.url}/view", params={"filename": "example.png", "type": "input"}) as r:
                assert r.status == 200 and r.content_type == "image/png"
                Image.open(io.BytesIO(await r.read())).verify()
            async with session.get(f"{live.url}/view", params={"filename": "txt2img.json", "type": "input"}) as r:
                assert r.status == 404
    run(main())


def test_editor_static_files(live, tmp_path):
    root = tmp_path / "web"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>editor</title>")
    (root / "js" / "app.js").write_text("export const x = 1;")
    (root / ".secret").write_text("no")
    outside = tmp_path / "outside.txt"
    outside.write_text("private")
    (root / "link.txt").symlink_to(outside)
    previous = live.server.config.web_root
    live.server.config.web_root = root

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{live.url}/") as response:
                assert response.status == 200 and "editor" in await response.text()
                assert response.headers["Cache-Control"] == "no-cache"
            async with session.get(f"{live.url}/js/app.js") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/javascript")
            for path in ("/.secret", "/link.txt", "/../outside.txt", "/js/../../outside.txt", "/nothing.js"):
                async with session.get(f"{live.url}{path}") as response:
                    assert response.status == 404, path
                    assert "private" not in await response.text()
    try:
        run(main())
    finally:
        live.server.config.web_root = previous


# -------------------------------------------------------------------------------------------------
# Faults (scale-security.md B.3.5)
# -------------------------------------------------------------------------------------------------

def test_node_exception_fails_only_that_prompt(live):
    """X1: the owner gets node id, type and message (no traceback); the next prompt runs; no poisoned cache."""
    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                failing = await queue_prompt(session, live.url, add_prompt(61, fail="kaboom"), client_id)
                seen = await wait_done(ws, failing["prompt_id"])
                error = next(m["data"] for m in seen if m["type"] == "execution_error")
                assert error["node_id"] == "3" and error["node_type"] == "TestRaise"
                assert error["exception_message"] == "kaboom" and error["traceback"] == []
                entry = await wait_history(session, live.url, failing["prompt_id"])
                assert entry["status"]["status_str"] == "error"
                assert "Traceback" not in json.dumps(entry)
                again = await queue_prompt(session, live.url, add_prompt(61, fail="kaboom"), client_id)
                seen = await wait_done(ws, again["prompt_id"])
                assert any(m["type"] == "execution_error" for m in seen)  # re-executed, not a cached success
                ok = await queue_prompt(session, live.url, add_prompt(62), client_id)
                seen = await wait_done(ws, ok["prompt_id"])
                assert any(m["type"] == "execution_success" for m in seen)
    run(main())


def test_readiness_follows_the_worker(live):
    """H2/H3: /api/ready is 503 while a running prompt reports nothing for too long, 200 again after."""
    config = live.server.config

    async def main():
        async with aiohttp.ClientSession() as session:
            config.stall_timeout_s = 0.3
            try:
                queued = await queue_prompt(session, live.url, add_prompt(81, sleep=1.2, steps=1))
                await asyncio.sleep(0.8)
                async with session.get(f"{live.url}/api/ready") as response:
                    body = await response.json()
                    assert response.status == 503 and body["checks"]["worker_responsive"] is False
                async with session.get(f"{live.url}/api/health") as response:
                    assert response.status == 200
                await wait_history(session, live.url, queued["prompt_id"])
                async with session.get(f"{live.url}/api/ready") as response:
                    assert response.status == 200
            finally:
                config.stall_timeout_s = 900.0
    run(main())


def test_client_disconnect_mid_run_does_not_leak(live):
    """X5: the prompt completes, the socket map shrinks back, a reconnect gets the current state."""
    async def main():
        client_id = new_client_id()
        hub = live.server.hub
        before = len(hub.clients)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{live.ws_url}?clientId={client_id}")
            await ws.receive_json()
            queued = await queue_prompt(session, live.url, add_prompt(71, sleep=0.6, steps=30), client_id)
            while True:
                message = await ws.receive_json(timeout=10)
                if message["type"] == "progress":
                    break
            await ws.close()
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as again:
                hello = await again.receive_json()
                assert hello["data"]["sid"] == client_id
                current = await again.receive_json(timeout=5)
                assert current["type"] in ("executing", "progress")
                assert current["data"]["prompt_id"] == queued["prompt_id"]
            entry = await wait_history(session, live.url, queued["prompt_id"])
            assert entry["status"]["status_str"] == "success"
        for _ in range(50):
            if len(hub.clients) == before:
                break
            await asyncio.sleep(0.05)
        assert len(hub.clients) == before
    run(main())


def test_socket_churn_leaves_nothing_behind(live):
    """L5 (scaled down): 200 connect/disconnect cycles; clients and server tasks return to their baseline."""
    hub = live.server.hub

    async def server_tasks() -> int:
        async def count():
            return len(asyncio.all_tasks())
        return asyncio.run_coroutine_threadsafe(count(), live.loop).result(5)

    async def main():
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(0.1)
            clients_before, tasks_before = len(hub.clients), await server_tasks()
            for index in range(200):
                ws = await session.ws_connect(f"{live.ws_url}?clientId=churn-{index % 7}")
                await ws.receive_json()
                await ws.close()
            for _ in range(100):
                if len(hub.clients) == clients_before and await server_tasks() <= tasks_before:
                    break
                await asyncio.sleep(0.05)
            assert len(hub.clients) == clients_before
            assert await server_tasks() <= tasks_before
    run(main())


def test_slow_reader_is_bounded(live):
    """A socket whose outbox is full loses progress messages first, then is closed; others are unaffected."""
    hub = live.server.hub

    async def flood():
        client = hub.clients["slow-reader"]
        client.sender.cancel()  # stop draining: the outbox can only fill up
        await asyncio.sleep(0)
        for i in range(hub.max_pending + 10):
            hub.send("progress", {"value": i}, "slow-reader")
        dropped_only = "slow-reader" in hub.clients
        for i in range(hub.max_pending + 10):
            hub.send("executed", {"value": i}, "slow-reader")
        return dropped_only, "slow-reader" in hub.clients

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId=slow-reader") as ws:
                await ws.receive_json()
                await asyncio.sleep(0.05)
                dropped_only, still_there = asyncio.run_coroutine_threadsafe(flood(), live.loop).result(5)
                assert dropped_only and not still_there
                closing = await ws.receive(timeout=5)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            async with session.get(f"{live.url}/api/health") as response:
                assert response.status == 200
    run(main())


def test_client_recipe_tiny_checkpoint(live):
    """§1.6 with a real (tiny, random-weight) SD1 checkpoint: txt2img -> SaveImage -> /view gives the PNG."""
    import shutil

    from loom.nodes.kernel import folders
    from tests.fixtures_checkpoints import checkpoint_path
    target = folders.current().model_paths("checkpoints")[0] / "tiny-sd1.safetensors"
    shutil.copyfile(checkpoint_path("sd1"), target)
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 2, "cfg": 2.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "tiny", "images": ["8", 0]}},
    }

    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{live.url}/object_info/CheckpointLoaderSimple") as response:
                names = (await response.json())["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
            assert "tiny-sd1.safetensors" in names
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                queued = await queue_prompt(session, live.url, prompt, client_id)
                seen = await wait_done(ws, queued["prompt_id"], timeout=240)
            types = [m["type"] for m in seen if isinstance(m, dict)]
            assert "execution_success" in types, [m for m in seen if isinstance(m, dict)][-3:]
            steps = [m["data"] for m in seen if isinstance(m, dict) and m["type"] == "progress"
                     and m["data"]["node"] == "3"]
            assert steps and steps[-1]["value"] == steps[-1]["max"] == 2
            entry = await wait_history(session, live.url, queued["prompt_id"])
            image = entry["outputs"]["9"]["images"][0]
            async with session.get(f"{live.url}/view", params=image) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "image/png"
                picture = Image.open(io.BytesIO(await response.read()))
            assert picture.size == (64, 64)
            assert json.loads(picture.info["prompt"])["3"]["inputs"]["seed"] == 7
    try:
        run(main())
    finally:
        target.unlink()

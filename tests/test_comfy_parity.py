"""ComfyUI API parity (issue 17, items 1-5; issue 13 X15), against a real server on a loopback port.

The client here is written the way ComfyUI's ``script_examples`` are: plain ``urllib.request`` for
``/prompt``, ``/history`` and ``/view`` (``basic_api_example.py``, ``websockets_api_example.py``), and a
WebSocket read loop that collects the binary frames of the ``SaveImageWebsocket`` node
(``websockets_api_example_ws_images.py``, which strips the 8-byte header: ``out[8:]``). The examples use
the ``websocket-client`` package, which is not a test dependency of Loom; aiohttp's client plays its part.
The models are the tiny random-weight checkpoints of ``tests/fixtures_checkpoints.py``.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import urllib.parse
import urllib.request
import uuid

import aiohttp
import pytest
from PIL import Image

from tests.fixtures_checkpoints import FILE_NAMES, write_checkpoint
from tests.fixtures_server import (LiveServer, add_prompt, new_client_id, run_async, send_feature_flags, wait_done,
                                   wait_history)

CHECKPOINT = FILE_NAMES["sd1"]


@pytest.fixture(scope="module")
def live(tmp_path_factory, registry):
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig

    previous = folders.current()
    base = tmp_path_factory.mktemp("parity_base")
    folders.configure(base)
    write_checkpoint("sd1", base / "models" / "checkpoints" / CHECKPOINT)
    server = LiveServer(ServerConfig(registry=registry))
    yield server
    server.close()
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


def run(coro):
    return run_async(coro)


# -------------------------------------------------------------------------------------------------
# A client written like ComfyUI's script_examples
# -------------------------------------------------------------------------------------------------

class ScriptExampleClient:
    """``queue_prompt`` / ``get_history`` / ``get_image`` as the examples write them (urllib, JSON)."""

    def __init__(self, server_address: str, client_id: str) -> None:
        self.server_address = server_address
        self.client_id = client_id

    def queue_prompt(self, prompt: dict, prompt_id: str) -> dict:
        p = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        data = json.dumps(p).encode("utf-8")
        req = urllib.request.Request(f"http://{self.server_address}/prompt", data=data)
        return json.loads(urllib.request.urlopen(req).read())

    def get_image(self, filename: str, subfolder: str, folder_type: str) -> bytes:
        data = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        url_values = urllib.parse.urlencode(data)
        with urllib.request.urlopen(f"http://{self.server_address}/view?{url_values}") as response:
            return response.read()

    def get_history(self, prompt_id: str) -> dict:
        with urllib.request.urlopen(f"http://{self.server_address}/history/{prompt_id}") as response:
            return json.loads(response.read())

    async def get_images(self, ws: aiohttp.ClientWebSocketResponse, prompt: dict) -> tuple[dict, dict]:
        """``websockets_api_example.py``'s and ``..._ws_images.py``'s loops in one: images from history +
        /view by output node, and the binary frames that arrived while the ``SaveImageWebsocket`` node ran."""
        prompt_id = str(uuid.uuid4())
        await asyncio.to_thread(self.queue_prompt, prompt, prompt_id)
        ws_images: dict[str, list[bytes]] = {}
        current_node = ""
        while True:
            out = await ws.receive(timeout=60)
            if out.type == aiohttp.WSMsgType.TEXT:
                message = json.loads(out.data)
                if message["type"] == "executing":
                    data = message["data"]
                    if data["prompt_id"] == prompt_id:
                        if data["node"] is None:
                            break  # execution is done
                        current_node = data["node"]
            elif out.type == aiohttp.WSMsgType.BINARY:
                if current_node == "save_image_websocket_node":
                    ws_images.setdefault(current_node, []).append(out.data[8:])
            else:
                raise AssertionError(f"socket closed: {out}")
        history = (await asyncio.to_thread(self.get_history, prompt_id))[prompt_id]
        saved: dict[str, list[bytes]] = {}
        for node_id, node_output in history["outputs"].items():
            for image in node_output.get("images", []):
                saved.setdefault(node_id, []).append(await asyncio.to_thread(
                    self.get_image, image["filename"], image["subfolder"], image["type"]))
        return saved, ws_images


def txt2img(seed: int, *, batch_size: int = 2, steps: int = 3, websocket: bool = True, save: bool = True) -> dict:
    """ComfyUI's example prompt on the tiny SD1 checkpoint, with SaveImage and/or SaveImageWebsocket."""
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch_size}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "masterpiece best quality girl", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "bad hands", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    }
    if save:
        prompt["9"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
    if websocket:
        prompt["save_image_websocket_node"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["8", 0]}}
    return prompt


async def _history_of(live, prompt_id: str) -> dict:
    async with aiohttp.ClientSession() as session:
        return await wait_history(session, live.url, prompt_id, timeout=60)


def host(live) -> str:
    return f"127.0.0.1:{live.port}"


def frame_parts(frame: bytes) -> tuple[int, dict | None, bytes]:
    """(event type, metadata or None, image bytes) of a binary frame."""
    kind = struct.unpack(">I", frame[:4])[0]
    if kind == 4:
        length = struct.unpack(">I", frame[4:8])[0]
        return kind, json.loads(frame[8:8 + length]), frame[8 + length:]
    return kind, {"format": struct.unpack(">I", frame[4:8])[0]}, frame[8:]


async def drain(ws: aiohttp.ClientWebSocketResponse, quiet: float = 0.3) -> list:
    seen = []
    while True:
        try:
            message = await ws.receive(timeout=quiet)
        except asyncio.TimeoutError:
            return seen
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            seen.append(message.data)
        else:
            return seen


# -------------------------------------------------------------------------------------------------
# 1. SaveImageWebsocket, and PNG bytes through history + /view
# -------------------------------------------------------------------------------------------------

def test_script_example_client_gets_pngs_through_history_view_and_websocket_frames(live):
    async def main():
        client = ScriptExampleClient(host(live), new_client_id())
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://{host(live)}/ws?clientId={client.client_id}") as ws:
                saved, ws_images = await client.get_images(ws, txt2img(seed=5))
        return saved, ws_images

    saved, ws_images = run(main())
    assert list(saved) == ["9"] and len(saved["9"]) == 2  # SaveImageWebsocket saves nothing, has no outputs
    assert list(ws_images) == ["save_image_websocket_node"] and len(ws_images["save_image_websocket_node"]) == 2
    for data in saved["9"] + ws_images["save_image_websocket_node"]:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.size == (64, 64)
    # the same pixels both ways (the websocket PNG has no metadata, the saved one has the prompt)
    for from_view, from_ws in zip(saved["9"], ws_images["save_image_websocket_node"]):
        assert Image.open(io.BytesIO(from_view)).convert("RGB").tobytes() == \
            Image.open(io.BytesIO(from_ws)).convert("RGB").tobytes()
        assert "prompt" in Image.open(io.BytesIO(from_view)).info
        assert "prompt" not in Image.open(io.BytesIO(from_ws)).info


def test_save_image_websocket_frames_are_comfyuis_and_only_for_the_prompts_client(live):
    """Type 1 + format 2 (PNG) for a plain client, type 4 with image/png for a metadata client; one
    progress step per image counting from 0; nothing to another client; it runs again when cached."""
    async def main():
        mine, other = new_client_id(), new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={mine}") as ws, \
                    session.ws_connect(f"{live.ws_url}?clientId={other}") as bystander:
                await ws.receive_json()
                await bystander.receive_json()
                runs = []
                for flags in (None, {"supports_preview_metadata": True}):
                    if flags is not None:
                        await send_feature_flags(ws, flags)
                    # the same prompt twice: everything upstream is cached the second time, the node still runs
                    body = {"prompt": txt2img(seed=9, websocket=True, save=False), "client_id": mine}
                    async with session.post(f"{live.url}/prompt", json=body) as response:
                        prompt_id = (await response.json())["prompt_id"]
                    runs.append((prompt_id, await wait_done(ws, prompt_id)))
                leaked = await drain(bystander)
        return runs, leaked

    runs, leaked = run(main())
    assert all(isinstance(m, str) and json.loads(m)["type"] == "status" for m in leaked)
    (first_id, first), (second_id, second) = runs
    cached = next(m for m in second if isinstance(m, dict) and m["type"] == "execution_cached")
    assert set(cached["data"]["nodes"]) >= {"4", "8"} and "save_image_websocket_node" not in cached["data"]["nodes"]
    for prompt_id, seen, metadata in ((first_id, first, False), (second_id, second, True)):
        frames = [m for m in seen if isinstance(m, bytes)]
        assert len(frames) == 2, seen
        for frame in frames:
            kind, meta, png = frame_parts(frame)
            if metadata:
                assert kind == 4 and meta == {"node_id": "save_image_websocket_node", "prompt_id": prompt_id,
                                              "display_node_id": "save_image_websocket_node",
                                              "parent_node_id": None, "real_node_id": "save_image_websocket_node",
                                              "image_type": "image/png"}
            else:
                assert frame[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02"
            assert Image.open(io.BytesIO(png)).format == "PNG"
        progress = [m["data"] for m in seen if isinstance(m, dict) and m["type"] == "progress"
                    and m["data"]["node"] == "save_image_websocket_node"]
        assert [(p["value"], p["max"]) for p in progress] == [(0, 2), (1, 2)]
        # no executed message: the node returns no ui (as in ComfyUI)
        assert not [m for m in seen if isinstance(m, dict) and m["type"] == "executed"
                    and m["data"]["node"] == "save_image_websocket_node"]


def test_save_image_websocket_in_object_info(live):
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{live.url}/api/object_info/SaveImageWebsocket") as response:
                return await response.json()
    info = run(main())["SaveImageWebsocket"]
    assert list(info["input"]) == ["required"] and info["input"]["required"]["images"][0] == "IMAGE"
    assert info["output"] == []
    assert info["output_node"] is True and info["category"] == "image"
    assert info["python_module"] == "custom_nodes.websocket_image_save"


# -------------------------------------------------------------------------------------------------
# 2. Latent previews only to clients that ask (or as --preview-method says)
# -------------------------------------------------------------------------------------------------

def test_latent_previews_only_to_clients_that_opt_in(live):
    """comfy-api-simplified takes every binary frame for an image: a client that did not ask gets only the
    SaveImageWebsocket PNGs; the editor's flag (latent_previews) gets JPEG step previews as well."""
    worker = live.server.worker

    async def one(flags: dict | None, seed: int, extra: dict | None = None) -> list[bytes]:
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                if flags is not None:
                    await send_feature_flags(ws, flags)
                body = {"prompt": txt2img(seed=seed, batch_size=1, steps=4, save=False), "client_id": client_id}
                if extra:
                    body["extra_data"] = extra
                async with session.post(f"{live.url}/prompt", json=body) as response:
                    prompt_id = (await response.json())["prompt_id"]
                seen = await wait_done(ws, prompt_id)
        return [frame_parts(m) for m in seen if isinstance(m, bytes)]

    def kinds(frames):
        return [meta.get("image_type") if kind == 4 else meta["format"] for kind, meta, _ in frames]

    original = worker.preview_method
    try:
        worker.preview_method = None  # the default: only clients that ask
        plain = run(one(None, 21))
        assert kinds(plain) == [2]  # just the PNG (format 2)
        asked = run(one({"supports_preview_metadata": True, "latent_previews": True}, 22))
        assert kinds(asked)[-1] == "image/png" and kinds(asked)[:-1] and \
            set(kinds(asked)[:-1]) == {"image/jpeg"}
        assert Image.open(io.BytesIO(asked[0][2])).format == "JPEG"
        legacy_asked = run(one({"latent_previews": True}, 23))
        assert set(kinds(legacy_asked)[:-1]) == {1} and kinds(legacy_asked)[-1] == 2  # type 1: JPEG then PNG
        # a prompt's own extra_data.preview_method (what newer ComfyUI frontends send) overrides
        assert kinds(run(one({"latent_previews": True}, 24, {"preview_method": "none"}))) == [2]
        assert set(kinds(run(one(None, 25, {"preview_method": "latent2rgb"})))[:-1]) == {1}

        worker.preview_method = "none"  # loom serve --preview-method none: nobody gets previews
        assert kinds(run(one({"latent_previews": True}, 26))) == [2]
        worker.preview_method = "auto"  # ComfyUI's meaning: every client gets them
        assert set(kinds(run(one(None, 27)))[:-1]) == {1}
    finally:
        worker.preview_method = original


def test_preview_method_setting_is_checked():
    from loom.server.worker import PREVIEW_METHODS, check_preview_method
    assert PREVIEW_METHODS == ("none", "auto", "latent2rgb", "taesd")
    assert check_preview_method(None) is None and check_preview_method("taesd") == "taesd"
    with pytest.raises(ValueError):
        check_preview_method("fast")


# -------------------------------------------------------------------------------------------------
# 3. The message sequence of one prompt, compared with ComfyUI's
# -------------------------------------------------------------------------------------------------

def _node_state(node: str, prompt_id: str, state: str, value: float, maximum: float) -> dict:
    return {"value": value, "max": maximum, "state": state, "node_id": node, "prompt_id": prompt_id,
            "display_node_id": node, "parent_node_id": None, "real_node_id": node}


def test_websocket_trace_matches_comfyuis_sequence(live):
    """One cached node (1), one that reports progress (2), an output (9), success.

    ComfyUI's documented order (reference §1.5): status(q=1) → execution_start → execution_cached → per node
    that runs: executing → (progress_state, progress)* → executed (output nodes) → … → execution_success →
    status(q=0) → executing{node: null}. Its execution.py sends each node's first progress_state (running,
    0 of 1) just before that node's ``executing``, and one (finished) after the node is done, after its
    ``executed``; the whole trace is compared exactly, timestamps aside."""
    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                warm = add_prompt(7301, sleep=0.01, steps=2)
                async with session.post(f"{live.url}/prompt", json={"prompt": warm, "client_id": client_id}) as r:
                    await wait_done(ws, (await r.json())["prompt_id"])
                await drain(ws, 0.2)
                prompt = add_prompt(7301, sleep=0.02, steps=2)  # node 1 unchanged: cached
                async with session.post(f"{live.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                    prompt_id = (await r.json())["prompt_id"]
                seen = await wait_done(ws, prompt_id)
                seen += await drain(ws, 0.3)  # nothing may follow executing{node: null}
        return prompt_id, seen

    prompt_id, seen = run(main())
    assert all(isinstance(m, dict) for m in seen)
    for message in seen:
        if isinstance(message.get("data"), dict):
            message["data"].pop("timestamp", None)
    start = next(i for i, m in enumerate(seen) if m["type"] == "execution_start")
    before = seen[:start]
    assert before and all(m == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}}
                          for m in before), before
    p = prompt_id
    running2 = _node_state("2", p, "running", 0.0, 1.0)
    finished2 = _node_state("2", p, "finished", 2, 2)
    expected = [
        {"type": "execution_start", "data": {"prompt_id": p}},
        {"type": "execution_cached", "data": {"nodes": ["1"], "prompt_id": p}},
        {"type": "progress_state", "data": {"prompt_id": p, "nodes": {"2": running2}}},
        {"type": "executing", "data": {"node": "2", "display_node": "2", "prompt_id": p}},
        {"type": "progress_state", "data": {"prompt_id": p, "nodes": {"2": _node_state("2", p, "running", 1, 2)}}},
        {"type": "progress", "data": {"value": 1, "max": 2, "prompt_id": p, "node": "2"}},
        {"type": "progress_state", "data": {"prompt_id": p, "nodes": {"2": _node_state("2", p, "running", 2, 2)}}},
        {"type": "progress", "data": {"value": 2, "max": 2, "prompt_id": p, "node": "2"}},
        {"type": "progress_state", "data": {"prompt_id": p, "nodes": {"2": finished2}}},
        {"type": "progress_state", "data": {"prompt_id": p, "nodes": {
            "2": finished2, "9": _node_state("9", p, "running", 0.0, 1.0)}}},
        {"type": "executing", "data": {"node": "9", "display_node": "9", "prompt_id": p}},
        {"type": "executed", "data": {"node": "9", "display_node": "9", "output": {"text": ["7301"]},
                                      "prompt_id": p}},
        {"type": "progress_state", "data": {"prompt_id": p, "nodes": {
            "2": finished2, "9": _node_state("9", p, "finished", 1.0, 1.0)}}},
        {"type": "execution_success", "data": {"prompt_id": p}},
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}},
        {"type": "executing", "data": {"node": None, "prompt_id": p}},
    ]
    assert seen[start:] == expected
    documented = ["execution_start", "execution_cached", "executing", "progress_state", "progress", "executed",
                  "execution_success", "status", "executing"]
    types = iter(m["type"] for m in seen[start:])
    assert all(kind in types for kind in documented)  # the documented order is a subsequence


def test_a_cached_output_node_is_finished_after_its_executed(live):
    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                for _ in range(2):
                    async with session.post(f"{live.url}/prompt",
                                            json={"prompt": add_prompt(7302), "client_id": client_id}) as r:
                        prompt_id = (await r.json())["prompt_id"]
                    seen = await wait_done(ws, prompt_id)
        return prompt_id, seen

    prompt_id, seen = run(main())
    kinds = [m["type"] for m in seen if m["type"] != "status"]
    assert kinds == ["execution_start", "execution_cached", "executed", "progress_state", "execution_success",
                     "executing"]
    state = next(m for m in seen if m["type"] == "progress_state")["data"]
    assert state == {"prompt_id": prompt_id, "nodes": {"9": _node_state("9", prompt_id, "finished", 1.0, 1.0)}}


def test_failed_prompt_ends_error_then_status_then_executing_null(live):
    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                async with session.post(f"{live.url}/prompt", json={
                        "prompt": add_prompt(7303, fail="boom"), "client_id": client_id}) as r:
                    prompt_id = (await r.json())["prompt_id"]
                return prompt_id, await wait_done(ws, prompt_id)

    prompt_id, seen = run(main())
    tail = [m["type"] for m in seen[-3:]]
    assert tail == ["execution_error", "status", "executing"], [m["type"] for m in seen]
    assert seen[-2]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    states = [m["data"]["nodes"] for m in seen if m["type"] == "progress_state"]
    assert states[-1]["3"]["state"] == "running"  # ComfyUI does not mark the failed node finished


# -------------------------------------------------------------------------------------------------
# 4-5. Routes and /system_stats
# -------------------------------------------------------------------------------------------------

def test_comfyui_routes_answer_in_comfyuis_shape(live):
    user = live.server.user_dir / "default" / "workflows"
    (user / "sub").mkdir(parents=True, exist_ok=True)
    (user / "a.json").write_text("{}")
    (user / "sub" / "b.json").write_text("{}")

    async def main():
        results = {}
        async with aiohttp.ClientSession() as session:
            for prefix in ("", "/api"):
                for path in ("/extensions", "/users", "/workflow_templates", "/i18n", "/userdata?dir=workflows",
                             "/userdata?dir=workflows&recurse=true", "/userdata?dir=workflows&recurse=true&split=true",
                             "/userdata?dir=workflows&full_info=true", "/internal/files/output",
                             "/internal/logs", "/internal/logs/raw",
                             f"/view_metadata/checkpoints?filename={CHECKPOINT}"):
                    async with session.get(f"{live.url}{prefix}{path}") as response:
                        results[prefix + path] = (response.status, await response.json())
                for path in ("/userdata", "/userdata?dir=nothing", "/userdata?dir=../..", "/internal/folder_paths",
                             "/experiment/models", "/view_metadata/checkpoints?filename=missing.safetensors",
                             "/view_metadata/nonsense?filename=x.safetensors", "/internal/files/secrets", "/jobs"):
                    async with session.get(f"{live.url}{prefix}{path}") as response:
                        results[prefix + path] = (response.status, await response.json())
                async with session.post(f"{live.url}{prefix}/users", json={"username": "x"}) as response:
                    results[prefix + "POST /users"] = (response.status, await response.json())
                async with session.patch(f"{live.url}{prefix}/internal/logs/subscribe",
                                         json={"clientId": "x", "enabled": True}) as response:
                    results[prefix + "PATCH"] = (response.status, None)
        return results

    results = run(main())
    for prefix in ("", "/api"):
        r = {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix) and
             (prefix or not k.startswith("/api"))}
        assert r["/extensions"] == (200, [])
        assert r["/users"] == (200, {"storage": "server", "migrated": True})
        assert r["/workflow_templates"] == (200, {}) and r["/i18n"] == (200, {})
        assert r["/userdata?dir=workflows"] == (200, ["a.json"])
        assert r["/userdata?dir=workflows&recurse=true"] == (200, ["a.json", "sub/b.json"])
        assert r["/userdata?dir=workflows&recurse=true&split=true"] == (200, [["a.json", "a.json"],
                                                                             ["sub/b.json", "sub", "b.json"]])
        status, info = r["/userdata?dir=workflows&full_info=true"]
        assert status == 200 and info[0]["path"] == "a.json" and info[0]["size"] == 2
        assert set(info[0]) == {"path", "size", "modified", "created"}
        assert r["/internal/files/output"][0] == 200 and isinstance(r["/internal/files/output"][1], list)
        assert r["/internal/logs"] == (200, "")
        assert r["/internal/logs/raw"][0] == 200 and set(r["/internal/logs/raw"][1]) == {"entries", "size"}
        assert r[f"/view_metadata/checkpoints?filename={CHECKPOINT}"] == \
            (200, {"note": "tiny random-weight test checkpoint", "family": "sd1"})
        assert r["/userdata"][0] == 400 and r["/userdata?dir=nothing"][0] == 404
        assert r["/userdata?dir=../.."][0] == 403
        for path in ("/internal/folder_paths", "/experiment/models", "/jobs",
                     "/view_metadata/checkpoints?filename=missing.safetensors",
                     "/view_metadata/nonsense?filename=x.safetensors"):
            status, body = r[path]
            assert status == 404 and body["error"]["message"], (path, body)
        assert "GET /models" in r["/internal/folder_paths"][1]["error"]["details"]
        assert r["/internal/files/secrets"][0] == 400
        assert r["POST /users"][0] == 400
        assert r["PATCH"][0] == 200


def test_system_stats_keys_are_comfyuis(live):
    import os
    import sys

    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{live.url}/api/system_stats") as response:
                return await response.json()

    stats = run(main())
    system = stats["system"]
    comfy_keys = {"os", "ram_total", "ram_free", "comfyui_version", "required_frontend_version",
                  "installed_templates_version", "required_templates_version", "python_version", "pytorch_version",
                  "embedded_python", "argv"}
    assert comfy_keys <= set(system)
    assert system["os"] == os.name == "posix"
    assert system["comfyui_version"] == "0.3.64" and system["loom_version"]
    assert system["python_version"] == sys.version
    assert isinstance(system["required_frontend_version"], str) and system["installed_templates_version"] is None
    assert set(stats["devices"][0]) == {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
                                        "torch_vram_free"}


# -------------------------------------------------------------------------------------------------
# Issue 13 X15: an exception inside a WebSocket send
# -------------------------------------------------------------------------------------------------

def test_an_exception_in_one_sockets_send_drops_only_that_socket(live, caplog):
    hub = live.server.hub

    async def main():
        broken_id, good_id = new_client_id(), new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={broken_id}") as broken, \
                    session.ws_connect(f"{live.ws_url}?clientId={good_id}") as good:
                await broken.receive_json()
                await good.receive_json()
                calls = []

                async def raising(*args, **kwargs):
                    calls.append(args)
                    raise ValueError("a bug in the send path")
                hub.clients[broken_id].ws.send_str = raising
                # two prompts' worth of messages: the broken socket fails on the first and is gone
                for value in (7401, 7402):
                    async with session.post(f"{live.url}/prompt", json={
                            "prompt": add_prompt(value), "client_id": good_id}) as r:
                        prompt_id = (await r.json())["prompt_id"]
                    seen = await wait_done(good, prompt_id)
                    assert seen[-1]["type"] == "executing"
                closing = await broken.receive(timeout=5)
                await asyncio.sleep(0.1)
                return calls, closing, broken_id in hub.clients, good_id in hub.clients, broken.closed

    with caplog.at_level(logging.WARNING, logger="loom.server"):
        calls, closing, broken_registered, good_registered, broken_closed = run(main())
    assert len(calls) == 1  # the socket was not used again
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert not broken_registered and good_registered and broken_closed
    failures = [r for r in caplog.records if "sending to client" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info and "a bug in the send path" in str(failures[0].exc_info[1])


def test_hub_delivers_to_others_when_one_send_raises():
    """The same at the unit level, with fake sockets: the broken one is unregistered, the other keeps
    getting every message."""
    from loom.server.clients import ClientHub

    class FakeWS:
        def __init__(self, fail: bool) -> None:
            self.fail, self.sent, self.closed, self.close_code = fail, [], False, None

        async def send_str(self, text):
            if self.fail:
                raise ValueError("boom")
            self.sent.append(text)

        async def send_bytes(self, data):
            self.sent.append(data)

        async def close(self, code=None, message=b""):
            self.closed, self.close_code = True, code

    async def main():
        hub = ClientHub()
        hub.attach(asyncio.get_running_loop())
        bad, good = FakeWS(True), FakeWS(False)
        a = hub.register(bad, "bad")
        b = hub.register(good, "good")
        for i in range(3):
            hub.send_status()
            hub.send("progress", {"value": i}, "good")
            await asyncio.sleep(0.01)
        await hub.unregister(b)
        return hub, a, bad, good

    hub, a, bad, good = run_async(main())
    assert "bad" not in hub.clients and a.closed and bad.closed and bad.close_code == 1011
    assert len(good.sent) == 6


@pytest.mark.browser
def test_the_editor_opts_in_and_gets_latent_previews(live, browser):
    """Loom's editor (web/api.js) asks for latent previews in its first message, and a server-sent step
    preview reaches its api as a ``preview`` event."""
    import time

    page = browser.new_page()
    try:
        page.goto(live.url + "/?test-hook")  # the test hook: window.loom
        page.wait_for_function("window.loom && window.loom.ready && window.loom.editor.api.connected",
                               timeout=30000)
        client_id = page.evaluate("loom.editor.api.clientId")
        deadline = time.monotonic() + 10
        while not live.server.hub.wants_latent_previews(client_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.server.hub.wants_latent_previews(client_id)
        page.evaluate("""() => { window.__previews = [];
            loom.editor.api.addEventListener('preview', (e) => window.__previews.push(e.detail.blob.type)); }""")
        body = json.dumps({"prompt": txt2img(seed=31, batch_size=1, steps=4, websocket=False),
                           "client_id": client_id}).encode()
        request = urllib.request.Request(f"{live.url}/prompt", data=body,
                                         headers={"Content-Type": "application/json"})
        prompt_id = json.loads(urllib.request.urlopen(request).read())["prompt_id"]
        page.wait_for_function("window.__previews.length > 0", timeout=60000)
        assert set(page.evaluate("window.__previews")) == {"image/jpeg"}
        run(_history_of(live, prompt_id))  # let the prompt finish before the next test
    finally:
        page.close()

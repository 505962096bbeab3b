"""A real Loom server for tests: in a background thread on an ephemeral loopback port, or as a process.

``LiveServer`` runs :func:`server.app.create_app` on its own event loop in a thread, so tests talk to it
with plain aiohttp clients over real sockets. ``ServerProcess`` runs ``python -m loom.server.cli serve`` for
the tests that kill the process.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
NODEPACK = REPO / "tests" / "nodepack"


def run_async(coro: Any) -> Any:
    """Run a client coroutine to completion on a fresh event loop in its own thread.

    The calling thread may already have a running loop (Playwright's sync API leaves one in the
    browser tests' session), where ``asyncio.run`` refuses to start.
    """
    return in_thread(asyncio.run, coro)


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a thread of its own: for code that starts an event loop (``asyncio.run``),
    which it cannot do in a thread where Playwright's loop is running. Exceptions reach the caller."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=target, name="test-client")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class LiveServer:
    """An in-process server on 127.0.0.1:<ephemeral>; ``url`` is its base address."""

    def __init__(self, config: Any) -> None:
        from aiohttp import web

        from loom.server.app import create_app, server_of
        self.app = create_app(config)
        self.server = server_of(self.app)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0
        self._web = web
        self._thread = threading.Thread(target=self._run, name="loom-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the test server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        runner = self._web.AppRunner(self.app, handle_signals=False, access_log=None)
        await runner.setup()
        await self._web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


class ServerProcess:
    """``loom serve`` in a subprocess (for kill/restart tests)."""

    def __init__(self, base_dir: Path, *extra: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loom.server.cli", "serve", "--base-dir", str(base_dir), "--nodes", str(NODEPACK),
             "--port", "0", "--no-browser", *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.url = ""
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(r"Loom is running at (http://[^/\s]+)", line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            self.proc.kill()
            raise RuntimeError("loom serve did not start:\n" + "".join(self.lines))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


# -------------------------------------------------------------------------------------------------
# Client helpers
# -------------------------------------------------------------------------------------------------

def add_prompt(value: int = 1, *, sleep: float | None = None, steps: int = 2, fail: str | None = None) -> dict:
    """``TestConstInt -> [TestSleep] -> [TestRaise] -> TestOutput``."""
    prompt: dict[str, Any] = {"1": {"class_type": "TestConstInt", "inputs": {"value": value}}}
    last = ["1", 0]
    if sleep is not None:
        prompt["2"] = {"class_type": "TestSleep", "inputs": {"value": last, "seconds": sleep, "steps": steps}}
        last = ["2", 0]
    if fail is not None:
        prompt["3"] = {"class_type": "TestRaise", "inputs": {"value": last, "message": fail}}
        last = ["3", 0]
    prompt["9"] = {"class_type": "TestOutput", "inputs": {"value": last}}
    return prompt


async def queue_prompt(session: aiohttp.ClientSession, base: str, prompt: dict, client_id: str | None = None,
                       **fields: Any) -> dict:
    body = {"prompt": prompt, **fields}
    if client_id is not None:
        body["client_id"] = client_id
    async with session.post(f"{base}/prompt", json=body) as response:
        data = await response.json()
        assert response.status == 200, data
        return data


async def send_feature_flags(ws: aiohttp.ClientWebSocketResponse, flags: dict, timeout: float = 10.0) -> dict:
    """Send ComfyUI's ``feature_flags`` message and return the server's reply, passing over the ``status``
    broadcasts every client may receive at any moment (a queue change of another prompt's)."""
    await ws.send_json({"type": "feature_flags", "data": flags})
    while True:
        message = await ws.receive_json(timeout=timeout)
        if message["type"] == "feature_flags":
            return message
        assert message["type"] == "status", message


async def wait_done(ws: aiohttp.ClientWebSocketResponse, prompt_id: str, timeout: float = 30.0) -> list[dict]:
    """JSON messages of ``prompt_id`` until ``executing`` with ``node: null``; binary frames as bytes."""
    return (await wait_all_done(ws, [prompt_id], timeout))[prompt_id]


async def wait_all_done(ws: aiohttp.ClientWebSocketResponse, prompt_ids: list[str],
                        timeout: float = 30.0) -> dict[str, list]:
    """The socket's messages until each of ``prompt_ids`` has ended (``executing`` with ``node: null``), for
    prompts that run at the same time: each id maps to every message seen until its own end."""
    seen: list[Any] = []
    done: dict[str, list] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(set(prompt_ids)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"prompts {sorted(set(prompt_ids) - set(done))} did not end in {timeout} s")
        try:
            message = await ws.receive(timeout=remaining)
        except asyncio.TimeoutError:
            continue
        if message.type == aiohttp.WSMsgType.BINARY:
            seen.append(message.data)
            continue
        if message.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket closed while waiting: {message}")
        data = json.loads(message.data)
        seen.append(data)
        payload = data.get("data") or {}
        if data["type"] == "executing" and payload.get("node") is None and payload.get("prompt_id") in prompt_ids:
            done[payload["prompt_id"]] = list(seen)
    return done


async def wait_history(session: aiohttp.ClientSession, base: str, prompt_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(f"{base}/history/{prompt_id}") as response:
            data = await response.json()
        if prompt_id in data:
            return data[prompt_id]
        await asyncio.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


def new_client_id() -> str:
    return uuid.uuid4().hex

"""Running a sweep on a ``loom serve`` (``--server``, ``--jobs``).

:func:`sweep_remote` is the command: it loads the workflow files, reads the node definitions from the server
(``/object_info``, converting UI-format workflows there), plans the runs and reports them. :func:`run_remote`
queues every run (``POST /prompt``), follows each over ``/ws`` (falling back to polling ``/history``), reads its
history entry and downloads its images through ``/view`` into the output folder; :func:`cancel_remote` takes
our runs off the queue when the sweep stops early. The token, if any, comes from ``$LOOM_TOKEN``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from loom.server.sweep.local import output_texts
from loom.server.sweep.plan import Run, RunResult, Workflow, build_dimensions, id_order, plan_runs
from loom.server.sweep.progress import SweepProgress
from loom.server.sweep.report import finish
from loom.server.sweep.values import Definitions, SweepError

DEFAULT_SERVER = "http://127.0.0.1:8188"
TOKEN_ENV = "LOOM_TOKEN"


class ServerError(Exception):
    """The server refused or failed (exit code 1), or refused a prompt (``invalid`` set: exit code 2)."""

    def __init__(self, message: str, invalid: list[str] | None = None) -> None:
        super().__init__(message)
        self.invalid = invalid


def server_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _json(response: Any) -> Any:
    try:
        return await response.json(content_type=None)
    except ValueError:  # not JSON: the caller reports the status instead
        return None


def _error_text(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('message', 'error')}" + (f": {error['details']}" if error.get("details") else "")
    return f"HTTP {status}"


async def fetch_definitions(session: Any, base: str) -> Definitions:
    async with session.get(f"{base}/object_info") as response:
        body = await _json(response)
        if response.status != 200 or not isinstance(body, dict):
            hint = f" (set ${TOKEN_ENV} to the server's token)" if response.status in (401, 403) else ""
            raise ServerError(f"GET {base}/object_info: {_error_text(body, response.status)}{hint}")
        return Definitions(body)


async def convert_on_server(session: Any, base: str, ui: dict[str, Any], path: Path) -> dict[str, Any]:
    async with session.post(f"{base}/workflow/convert", json=ui) as response:
        body = await _json(response)
    if response.status == 200 and isinstance(body, dict) and isinstance(body.get("prompt"), dict):
        return body["prompt"]
    problems = body.get("problems") if isinstance(body, dict) else None
    lines = [f"{path}: the workflow cannot be converted"]
    for item in problems or []:
        lines.append(f"node {item.get('node_id')} ({item.get('class_type')}): {item.get('message')}"
                     if isinstance(item, dict) and item.get("node_id") is not None else str(item.get("message", item)))
    if not problems:
        lines[0] += f": {_error_text(body, response.status)}"
    raise ServerError(lines[0], invalid=lines)


def _safe_relative(subfolder: str, filename: str) -> Path | None:
    parts = list(PurePosixPath(subfolder.replace("\\", "/")).parts + PurePosixPath(filename).parts)
    if not parts or any(p in ("..", "") or p.startswith("/") for p in parts) or "/" in filename.replace("\\", "/"):
        return None
    return Path(*parts)


def _prompt_errors(body: Any, status: int, run: Run) -> list[str]:
    lines = [f"{run.describe()}: the server refused the prompt: {_error_text(body, status)}"]
    node_errors = body.get("node_errors") if isinstance(body, dict) else None
    for node_id, entry in (node_errors or {}).items():
        for error in (entry or {}).get("errors", []):
            where = (error.get("extra_info") or {}).get("input_name")
            lines.append(f"node {node_id} ({entry.get('class_type')})" + (f" input {where!r}" if where else "")
                         + f": {error.get('message')}" + (f": {error['details']}" if error.get("details") else ""))
    return lines


async def run_remote(base: str, token: str | None, runs: list[Run], progress: SweepProgress, output_dir: Path,
                     on_result: Callable[[RunResult], None] | None = None, timeout: float = 3600.0,
                     session: Any = None) -> list[RunResult]:
    """Queue every run on ``base`` (POST /prompt), follow them on /ws, read /history, fetch files by /view."""
    import aiohttp

    own = session is None
    session = session or aiohttp.ClientSession(headers=server_headers(token))
    client_id = uuid.uuid4().hex
    queued: dict[str, Run] = {}
    events: dict[str, list[tuple[str, dict]]] = {}
    try:
        ws = None
        try:
            ws = await session.ws_connect(f"{base}/ws?clientId={client_id}", heartbeat=30)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ws = None  # follow the runs through /history alone
        order: list[str] = []
        try:
            for run in runs:
                extra = {"extra_pnginfo": {"workflow": run.workflow.ui}} if run.workflow.ui else {}
                body = {"prompt": run.prompt, "client_id": client_id, "extra_data": extra}
                async with session.post(f"{base}/prompt", json=body) as response:
                    answer = await _json(response)
                if response.status in (401, 403):
                    raise ServerError(f"POST {base}/prompt: {_error_text(answer, response.status)} (set "
                                      f"${TOKEN_ENV} to the server's token)")
                if response.status != 200 or not isinstance(answer, dict) or "prompt_id" not in answer:
                    raise ServerError("the server refused a prompt",
                                      invalid=_prompt_errors(answer, response.status, run))
                if answer.get("node_errors"):
                    order.append(answer["prompt_id"])
                    raise ServerError("the server would skip outputs",
                                      invalid=_prompt_errors(answer, response.status, run)
                                      + [f"nothing was run: {run.describe()} cannot make all its outputs"])
                order.append(answer["prompt_id"])
                queued[answer["prompt_id"]] = run
        except BaseException:
            await cancel_remote(session, base, order)
            raise
        results: list[RunResult] = []
        pending = list(order)
        started: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        try:
            while pending:
                current = pending[0]
                if current not in started:
                    started[current] = time.perf_counter()
                    run = queued[current]
                    progress.start_run(run, list(run.prompt))
                    for event, data in events.pop(current, []):
                        progress.on_event(event, data)
                finished = await _follow(session, base, ws, current, events, progress, deadline)
                if finished is None:  # the socket went away: poll from here on
                    ws = None
                    continue
                entry = await _history_entry(session, base, current, deadline)
                result = await _collect(session, base, queued[current], current, entry, output_dir,
                                        started[current], finished)
                progress.end_run(result)
                results.append(result)
                if on_result:
                    on_result(result)
                pending.pop(0)
        except BaseException:
            await cancel_remote(session, base, pending, interrupt=True)
            raise
        return results
    finally:
        if own:
            await session.close()


async def _follow(session: Any, base: str, ws: Any, prompt_id: str, events: dict[str, list[tuple[str, dict]]],
                  progress: SweepProgress, deadline: float) -> dict[str, list[str]] | None:
    """WebSocket messages until ``prompt_id`` ends: ``{"executed": [...], "cached": [...]}``; None if the
    socket closed (or there is none: then the history is polled)."""
    import aiohttp

    seen: dict[str, list[str]] = {"executed": [], "cached": []}
    if ws is None:
        await _history_entry(session, base, prompt_id, deadline)
        return seen
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServerError(f"prompt {prompt_id} did not finish in time")
        try:
            message = await ws.receive(timeout=min(remaining, 5.0))
        except asyncio.TimeoutError:
            # a quiet stretch (a long node, or a message missed): look at the history
            if await _history_entry(session, base, prompt_id, deadline, wait=False) is not None:
                return seen
            continue
        if message.type == aiohttp.WSMsgType.BINARY:
            continue  # latent previews
        if message.type != aiohttp.WSMsgType.TEXT:
            return None
        try:
            data = json.loads(message.data)
        except ValueError:
            continue
        kind, payload = data.get("type"), data.get("data") or {}
        owner = payload.get("prompt_id")
        if owner is not None and owner != prompt_id:
            events.setdefault(owner, []).append((kind, payload))  # a later run of ours, already going
            continue
        if owner is None and kind != "progress":
            continue
        progress.on_event(kind, payload)
        if kind == "execution_cached":
            seen["cached"] = [str(n) for n in payload.get("nodes") or []]
        elif kind == "executing" and payload.get("node") is not None:
            seen["executed"].append(str(payload["node"]))
        elif kind == "executing" and payload.get("node") is None:
            return seen
        elif kind in ("execution_error", "execution_interrupted"):
            return seen


async def _history_entry(session: Any, base: str, prompt_id: str, deadline: float,
                         wait: bool = True) -> dict[str, Any] | None:
    while True:
        async with session.get(f"{base}/history/{prompt_id}") as response:
            body = await _json(response)
            if response.status != 200:
                raise ServerError(f"GET {base}/history/{prompt_id}: {_error_text(body, response.status)}")
        if isinstance(body, dict) and prompt_id in body:
            return body[prompt_id]
        if not wait:
            return None
        if time.monotonic() > deadline:
            raise ServerError(f"prompt {prompt_id} did not finish in time")
        await asyncio.sleep(0.2)


async def _collect(session: Any, base: str, run: Run, prompt_id: str, entry: dict[str, Any], output_dir: Path,
                   started: float, seen: dict[str, list[str]]) -> RunResult:
    status = entry.get("status") or {}
    state = status.get("state") or ("success" if status.get("completed") else "error")
    result = RunResult(run, "success" if state == "success" else state, prompt_id=prompt_id)
    timing = entry.get("timing") or {}
    if isinstance(timing.get("started_at"), (int, float)) and isinstance(timing.get("finished_at"), (int, float)):
        result.seconds = max(0.0, timing["finished_at"] - timing["started_at"])
    else:
        result.seconds = time.perf_counter() - started
    cached = seen.get("cached") or []
    for kind, data in status.get("messages") or []:
        if kind == "execution_cached" and not cached:
            cached = [str(n) for n in data.get("nodes") or []]
        if kind == "execution_error":
            result.error = f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message')}"
    result.cached, result.executed = cached, seen.get("executed") or []
    if result.status not in ("success", "interrupted") and not result.error:
        error = status.get("error") or {}
        result.error = str(error.get("exception_message") or error.get("message") or "the run failed")
    result.texts = output_texts(entry.get("outputs") or {})
    for _node_id, ui in sorted((entry.get("outputs") or {}).items(), key=lambda item: id_order(item[0])):
        for image in (ui or {}).get("images", []):
            relative = _safe_relative(image.get("subfolder", ""), image.get("filename", ""))
            if relative is None:
                continue
            params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                      "type": image.get("type", "output")}
            async with session.get(f"{base}/view", params=params) as response:
                if response.status != 200:
                    raise ServerError(f"GET {base}/view {image['filename']}: HTTP {response.status}")
                data = await response.read()
            target = output_dir / relative if params["type"] == "output" else output_dir / params["type"] / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            result.files.append(target)
    return result


async def cancel_remote(session: Any, base: str, prompt_ids: list[str], interrupt: bool = False) -> None:
    """Take our queued runs off the server's queue (and stop the running one)."""
    if not prompt_ids:
        return
    try:
        async with session.post(f"{base}/queue", json={"delete": list(prompt_ids)}):
            pass
        if interrupt:
            async with session.post(f"{base}/interrupt", json={"prompt_id": prompt_ids[0]}):
                pass
    except Exception:  # the server is gone: nothing to cancel
        pass


def sweep_remote(args: argparse.Namespace, print_invalid: Callable[[list[str]], int]) -> int:
    """``loom run`` with ``--server`` or ``--jobs``: the sweep planned from the server's definitions, run there."""
    import os

    import aiohttp

    from loom.nodes.kernel import folders
    from loom.server import workflow as workflow_module
    from loom.server.cli import EXIT_FAILED, EXIT_OK, InvalidWorkflow

    base = (args.server or DEFAULT_SERVER).rstrip("/")
    if not re.match(r"https?://", base):
        raise SweepError(f"--server {base!r}: expected an http:// or https:// address")
    token = os.environ.get(TOKEN_ENV) or None
    folders.configure(args.base_dir, args.models_dir,
                      data_dirs={"output": args.output_dir} if args.output_dir else None)
    output_dir = folders.output_dir()
    loaded = []
    for path in args.workflow:
        if not path.is_file():
            raise SweepError(f"{path}: no such file")
        try:
            loaded.append((path, workflow_module.load_workflow_file(path)))
        except workflow_module.WorkflowError as problem:
            message = str(problem)
            raise InvalidWorkflow([message if message.startswith(f"{path}:") else f"{path}: {message}"]) from None

    state: dict[str, Any] = {"results": [], "dims": [], "several": len(loaded) > 1}

    async def main() -> int:
        async with aiohttp.ClientSession(headers=server_headers(token)) as session:
            try:
                definitions = await fetch_definitions(session, base)
            except aiohttp.ClientError as problem:
                raise ServerError(f"cannot reach the server at {base}: {problem}") from None
            workflows = []
            for path, item in loaded:
                prompt = item.api if item.api is not None else await convert_on_server(session, base, item.ui, path)
                workflows.append(Workflow(path, prompt, item.ui))
            dims = build_dimensions(args.seed, args.overrides, workflows[0], definitions)
            state["dims"] = dims
            runs = plan_runs(workflows, dims, args.zip, definitions)
            progress = SweepProgress(len(runs), sys.stderr, enabled=not args.quiet)
            state["progress"] = progress
            await run_remote(base, token, runs, progress, output_dir, on_result=state["results"].append,
                             session=session)
            progress.close()
            return EXIT_OK

    try:
        code = asyncio.run(main())
    except ServerError as problem:
        if "progress" in state:
            state["progress"].close()
        if problem.invalid:
            return print_invalid(problem.invalid)
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    except aiohttp.ClientError as problem:
        print(f"error: the server at {base}: {problem}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if "progress" in state:
            state["progress"].close()
        finish(args, state["results"], state["dims"], state["several"], partial=True)
        raise
    results = state["results"]
    code = finish(args, results, state["dims"], state["several"]) or code
    return code if code != EXIT_OK else (EXIT_FAILED if any(r.status != "success" for r in results) else EXIT_OK)

"""The server's typed contracts keep their wire forms: prompt states are the strings SQLite and JSON held
before, event payloads have ComfyUI's keys in its order, and ALWAYS_RERUN (or a NaN fingerprint, ComfyUI's
IS_CHANGED convention) never hits the cache."""
from __future__ import annotations

import json
import pickle
import sqlite3

from loom.server import events
from loom.nodes.kernel.schema import ALWAYS_RERUN
from loom.server.cache import cache_key
from loom.server.queue import TERMINAL_STATES, PromptState


def test_prompt_states_are_their_strings_in_sqlite_json_and_text():
    assert [s.value for s in PromptState] == ["pending", "running", "success", "error", "interrupted", "cancelled"]
    assert TERMINAL_STATES == ("success", "error", "interrupted", "cancelled")
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (state TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (PromptState.INTERRUPTED,))
    assert db.execute("SELECT state, typeof(state) FROM t").fetchone() == ("interrupted", "text")
    assert json.dumps({"state": PromptState.SUCCESS}) == '{"state": "success"}'
    assert f"{PromptState.ERROR}" == str(PromptState.ERROR) == "error"
    assert PromptState("cancelled") is PromptState.CANCELLED and PromptState.RUNNING == "running"
    assert pickle.loads(pickle.dumps(PromptState.ERROR)) is PromptState.ERROR


def test_event_payloads_have_comfyuis_keys_in_order():
    assert events.executing("3", "p") == ("executing", {"node": "3", "display_node": "3", "prompt_id": "p"})
    assert events.idle("p") == ("executing", {"node": None, "prompt_id": "p"})
    assert events.progress(2, 20, "p", "3") == ("progress", {"value": 2, "max": 20, "prompt_id": "p", "node": "3"})
    assert list(events.executed("9", {"images": []}, "p")[1]) == ["node", "display_node", "output", "prompt_id"]
    assert list(events.execution_start("p")[1]) == ["prompt_id", "timestamp"]
    assert list(events.execution_cached(["1"], "p")[1]) == ["nodes", "prompt_id", "timestamp"]
    name, data = events.execution_interrupted("p", "3", "KSampler", ("1", "2"))
    assert name == "execution_interrupted" and "reason" not in data
    assert list(data) == ["prompt_id", "node_id", "node_type", "executed", "timestamp"] and data["executed"] == ["1", "2"]
    assert events.execution_interrupted("p", None, None, [], reason="why")[1]["reason"] == "why"
    name, data = events.execution_error("p", "3", "KSampler", ["1"], "boom", "ValueError", worker="thread")
    assert name == "execution_error"
    assert list(data) == ["prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                          "traceback", "current_inputs", "current_outputs", "timestamp", "worker"]
    assert data["traceback"] == [] and data["current_inputs"] == {} and data["current_outputs"] == []
    assert events.TERMINAL_EVENTS == {"execution_success", "execution_error", "execution_interrupted"}


def test_always_rerun_and_nan_fingerprints_never_repeat_a_key():
    assert cache_key("A", {"x": 1}, {}, 5) == cache_key("A", {"x": 1}, {}, 5)
    assert cache_key("A", {"x": 1}, {}, ALWAYS_RERUN) != cache_key("A", {"x": 1}, {}, ALWAYS_RERUN)
    assert cache_key("A", {}, {}, float("nan")) != cache_key("A", {}, {}, float("nan"))
    assert pickle.loads(pickle.dumps(ALWAYS_RERUN)) is ALWAYS_RERUN and repr(ALWAYS_RERUN) == "ALWAYS_RERUN"

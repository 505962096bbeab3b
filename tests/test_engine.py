"""The engine: validation, the plan, the cache across runs, error isolation, interrupt, partial execution."""
from __future__ import annotations

import json
import threading
import time

import pytest

from loom.nodes.kernel.schema import Combo, Int, Node, NodeRegistry, Output, Schema, Socket, String, types_compatible
from loom.server.cache import OutputCache, estimate_bytes
from loom.server.executor import Executor
from loom.server.validation import validate_prompt


def chain_prompt(value: int = 3, b: int = 4) -> dict:
    return {
        "1": {"class_type": "TestConstInt", "inputs": {"value": value}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": b}},
        "3": {"class_type": "TestIntToString", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "TestStringConcat", "inputs": {"a": "sum=", "b": ["3", 0]}},
        "5": {"class_type": "TestOutput", "inputs": {"value": ["4", 0]}},
        "6": {"class_type": "TestConstInt", "inputs": {"value": 10}},
        "7": {"class_type": "TestOutput", "inputs": {"value": ["6", 0]}},
    }


def run(executor: Executor, prompt: dict, prompt_id: str = "p", **kwargs):
    events: list[tuple[str, dict]] = []
    result = executor.execute(prompt, prompt_id, on_event=lambda e, d: events.append((e, d)), **kwargs)
    return result, events


# ---------------------------------------------------------------- schema


def test_object_info_has_comfyui_shape(registry):
    info = registry.object_info("TestSeeded")["TestSeeded"]
    assert list(info) == ["input", "input_order", "output", "output_is_list", "output_name", "name",
                          "display_name", "description", "python_module", "category", "output_node"]
    assert info["input"]["required"]["seed"] == ["INT", {"default": 0, "min": 0, "max": 2**64 - 1,
                                                         "control_after_generate": True}]
    assert info["input_order"] == {"required": ["seed", "steps"]}
    combo = registry.object_info("TestChoice")["TestChoice"]["input"]["required"]["choice"]
    assert combo == [["alpha", "beta", "gamma"], {"default": "alpha"}]
    concat = registry.object_info("TestStringConcat")["TestStringConcat"]
    assert concat["input_order"] == {"required": ["a", "b"], "optional": ["separator"]}
    assert concat["input"]["required"]["b"][1]["multiline"] is True
    output = registry.object_info("TestOutput")["TestOutput"]
    assert output["output_node"] is True and output["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}


def test_type_compatibility_follows_comfyui():
    assert types_compatible("INT", "INT")
    assert types_compatible("*", "MODEL") and types_compatible("LATENT", "*")
    assert types_compatible("FLOAT,INT", "INT")
    assert not types_compatible("IMAGE", "LATENT")


def test_schema_rejects_duplicate_input_names():
    with pytest.raises(ValueError, match="duplicate"):
        Schema("Broken", inputs=[Int("a"), Int("a")])


# ---------------------------------------------------------------- validation


def test_valid_prompt_plans_only_what_outputs_need(registry):
    prompt = chain_prompt()
    prompt["99"] = {"class_type": "TestAdd", "inputs": {"a": 1}}  # dangling, missing b: not validated
    result = validate_prompt(prompt, registry)
    assert result.ok, result.messages()
    assert result.outputs == ["5", "7"]
    assert "99" not in result.order
    assert result.order.index("1") < result.order.index("2") < result.order.index("5")


def test_all_errors_reported_at_once_with_node_type_and_input(registry):
    prompt = {
        "1": {"class_type": "TestAdd", "inputs": {"a": "x", "b": 2_000_000_000}},
        "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "TestChoice", "inputs": {"choice": "delta"}},
        "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}},
        "5": {"class_type": "TestStringConcat", "inputs": {"a": "x"}},
        "6": {"class_type": "TestOutput", "inputs": {"value": ["5", 0]}},
    }
    result = validate_prompt(prompt, registry)
    assert not result.ok
    assert result.error["type"] == "prompt_outputs_failed_validation"
    kinds = {(nid, e["type"], e["extra_info"].get("input_name"))
             for nid, entry in result.node_errors.items() for e in entry["errors"]}
    assert kinds == {("1", "invalid_input_type", "a"), ("1", "value_bigger_than_max", "b"),
                     ("3", "value_not_in_list", "choice"), ("5", "required_input_missing", "b")}
    assert result.node_errors["1"]["class_type"] == "TestAdd"
    assert result.node_errors["1"]["dependent_outputs"] == ["2"]
    assert "2" not in result.node_errors  # only root causes carry errors
    assert any("node 3 (TestChoice) input 'choice'" in line for line in result.messages())


def test_bad_links_type_mismatch_and_unknown_types(registry):
    prompt = {
        "1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
        "2": {"class_type": "TestStringConcat", "inputs": {"a": ["1", 0], "b": ["404", 0]}},
        "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "TestIntToString", "inputs": {"value": ["1", 5]}},
        "5": {"class_type": "TestOutput", "inputs": {"value": ["4", 0]}},
        "6": {"class_type": "TestIntToString", "inputs": {"value": [1, 2, 3]}},
        "7": {"class_type": "TestOutput", "inputs": {"value": ["6", 0]}},
    }
    result = validate_prompt(prompt, registry)
    errors = {(nid, e["type"]) for nid, entry in result.node_errors.items() for e in entry["errors"]}
    assert errors == {("2", "return_type_mismatch"), ("2", "bad_linked_input"), ("4", "bad_linked_input"),
                      ("6", "bad_linked_input")}
    unknown = validate_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}},
                               "2": {"class_type": "AlsoMissing"}}, registry)
    assert unknown.error["type"] == "invalid_prompt"
    assert "NoSuchNode" in unknown.error["message"] and set(unknown.node_errors) == {"1", "2"}


@pytest.mark.parametrize("prompt, kind", [
    ([], "invalid_prompt"),
    ({"1": "text"}, "invalid_prompt"),
    ({"1": {"inputs": {}}}, "invalid_prompt"),
    ({}, "prompt_no_outputs"),
    ({"1": {"class_type": "TestConstInt", "inputs": {"value": 1}}}, "prompt_no_outputs"),
])
def test_malformed_prompts_are_clear_errors(registry, prompt, kind):
    result = validate_prompt(prompt, registry)
    assert not result.ok and result.error["type"] == kind


def test_cycle_is_reported(registry):
    prompt = {
        "1": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 1}},
        "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
    }
    result = validate_prompt(prompt, registry)
    assert not result.ok
    assert {e["type"] for entry in result.node_errors.values() for e in entry["errors"]} == {"dependency_cycle"}


def test_some_outputs_valid_runs_those_and_reports_the_rest(registry):
    prompt = chain_prompt()
    prompt["8"] = {"class_type": "TestAdd", "inputs": {"a": 1}}
    prompt["9"] = {"class_type": "TestOutput", "inputs": {"value": ["8", 0]}}
    result = validate_prompt(prompt, registry)
    assert result.ok and result.outputs == ["5", "7"] and "8" in result.node_errors


def test_ten_thousand_node_chain_validates(registry):
    prompt = {"0": {"class_type": "TestConstInt", "inputs": {"value": 0}}}
    for i in range(1, 10_000):
        prompt[str(i)] = {"class_type": "TestAdd", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    prompt["out"] = {"class_type": "TestOutput", "inputs": {"value": ["9999", 0]}}
    result = validate_prompt(prompt, registry)
    assert result.ok and len(result.order) == 10_001
    ran = Executor(registry).execute(prompt, "long")
    assert ran.ok and ran.outputs["out"] == {"text": ["9999"]}


def test_custom_validation_and_fingerprint(registry, base_dir):
    prompt = {"1": {"class_type": "TestReadFile", "inputs": {"filename": "missing.txt"}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    result = validate_prompt(prompt, registry)
    assert result.node_errors["1"]["errors"][0]["type"] == "custom_validation_failed"
    assert "missing.txt" in result.node_errors["1"]["errors"][0]["details"]
    escape = validate_prompt({"1": {"class_type": "TestReadFile", "inputs": {"filename": "../../etc/passwd"}},
                              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}, registry)
    assert not escape.ok

    (base_dir / "input" / "note.txt").write_text("first")
    prompt["1"]["inputs"]["filename"] = "note.txt"
    executor = Executor(registry)
    first, _ = run(executor, prompt)
    assert first.outputs["2"] == {"text": ["first"]}
    again, _ = run(executor, prompt)
    assert again.executed == []
    (base_dir / "input" / "note.txt").write_text("second")
    changed, _ = run(executor, prompt)
    assert changed.executed == ["1", "2"] and changed.outputs["2"] == {"text": ["second"]}


# ---------------------------------------------------------------- execution and cache


def test_events_follow_comfyui_sequence(registry):
    result, events = run(Executor(registry), chain_prompt(), "abc")
    assert result.ok
    kinds = [e for e, _ in events]
    assert kinds[0] == "execution_start" and kinds[1] == "execution_cached"
    assert kinds[-2:] == ["execution_success", "executing"] and events[-1][1]["node"] is None
    executed = [d for e, d in events if e == "executed"]
    assert {d["node"] for d in executed} == {"5", "7"}
    assert next(d for d in executed if d["node"] == "5")["output"] == {"text": ["sum=7"]}
    assert all(d["prompt_id"] == "abc" for _, d in events)
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached", "execution_success"]


def test_unchanged_rerun_runs_nothing_and_changed_literal_reruns_downstream_only(registry):
    executor = Executor(registry)
    first, _ = run(executor, chain_prompt())
    assert sorted(first.executed) == ["1", "2", "3", "4", "5", "6", "7"]

    again, events = run(executor, chain_prompt())
    assert again.executed == [] and sorted(again.cached) == ["1", "2", "3", "4", "5", "6", "7"]
    assert again.outputs["5"] == {"text": ["sum=7"]}
    assert {d["node"] for e, d in events if e == "executed"} == {"5", "7"}

    changed, _ = run(executor, chain_prompt(b=5))
    assert changed.executed == ["2", "3", "4", "5"]
    assert changed.outputs["5"] == {"text": ["sum=8"]}


def test_identical_subchains_share_cache_entries(registry):
    executor = Executor(registry)
    run(executor, chain_prompt())
    renumbered = {f"x{k}": {**v, "inputs": {n: ([f"x{val[0]}", val[1]] if isinstance(val, list) else val)
                                           for n, val in v["inputs"].items()}}
                  for k, v in chain_prompt().items()}
    result, _ = run(executor, renumbered)
    # only the output nodes (keyed by their own id through UNIQUE_ID) run again
    assert sorted(result.executed) == ["x5", "x7"]


def test_node_exception_fails_prompt_and_executor_stays_usable(registry):
    executor = Executor(registry)
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
              "2": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "exploded"}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    result, events = run(executor, prompt, "bad")
    assert result.status == "error"
    error = result.error
    assert error["node_id"] == "2" and error["node_type"] == "TestRaise"
    assert error["exception_message"] == "exploded" and error["exception_type"] == "RuntimeError"
    assert error["executed"] == ["1"]
    assert [e for e, _ in events][-2:] == ["execution_error", "executing"]
    good, _ = run(executor, chain_prompt())
    assert good.ok


def test_interrupt_between_progress_ticks(registry):
    executor = Executor(registry)
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
              "2": {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": 20.0, "steps": 1000}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    started = threading.Event()

    def on_event(event, data):
        if event == "progress":
            started.set()

    holder = {}
    worker = threading.Thread(target=lambda: holder.setdefault(
        "result", executor.execute(prompt, "long", on_event=on_event)))
    worker.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    assert executor.interrupt("other-prompt") is False
    assert executor.interrupt() is True
    worker.join(10)
    assert time.perf_counter() - t0 < 2
    result = holder["result"]
    assert result.status == "interrupted"
    assert result.messages[-1][0] == "execution_interrupted" and result.messages[-1][1]["node_id"] == "2"
    assert run(executor, chain_prompt())[0].ok


def test_cancel_token_stops_before_next_node(registry):
    cancel = threading.Event()
    cancel.set()
    result = Executor(registry).execute(chain_prompt(), "c", cancel=cancel)
    assert result.status == "interrupted" and result.executed == []


def test_partial_execution_runs_only_requested_outputs(registry):
    executor = Executor(registry)
    result, _ = run(executor, chain_prompt(), outputs=["7"])
    assert sorted(result.executed) == ["6", "7"] and list(result.outputs) == ["7"]
    nothing = executor.execute(chain_prompt(), "n", outputs=[])
    assert nothing.status == "error" and nothing.error["type"] == "prompt_no_outputs"


def test_output_lists_fan_out_downstream():
    registry = NodeRegistry()

    class Split(Node):
        @classmethod
        def define_schema(cls):
            return Schema("Split", inputs=[String("text")], outputs=[Output("STRING", is_list=True)])

        @classmethod
        def execute(cls, text):
            return (text.split(","),)

    class Upper(Node):
        @classmethod
        def define_schema(cls):
            return Schema("Upper", inputs=[Socket("text", "STRING")], outputs=[Output("STRING")])

        @classmethod
        def execute(cls, text):
            return (text.upper(),)

    class Show(Node):
        @classmethod
        def define_schema(cls):
            return Schema("Show", inputs=[Socket("text", "STRING")], output_node=True)

        @classmethod
        def execute(cls, text):
            from loom.nodes.kernel.schema import NodeOutput
            return NodeOutput(ui={"text": [text]})

    for node_class in (Split, Upper, Show):
        registry.add(node_class)
    prompt = {"1": {"class_type": "Split", "inputs": {"text": "a,b,c"}},
              "2": {"class_type": "Upper", "inputs": {"text": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"text": ["2", 0]}}}
    result = Executor(registry).execute(prompt, "lists")
    assert result.outputs["3"] == {"text": ["A", "B", "C"]}


def test_cache_is_bounded_by_entries_and_bytes():
    cache = OutputCache(max_entries=3, max_bytes=10_000)
    for i in range(5):
        cache.put(f"k{i}", (["x" * 100],), None)
    assert len(cache) == 3 and "k0" not in cache and "k4" in cache
    cache.get("k2")
    cache.put("big", (["y" * 9_000],), None)
    assert "big" in cache and cache.nbytes <= 10_000 and "k2" in cache
    protected = OutputCache(max_entries=1)
    protected.put("a", ([1],), None)
    protected.put("b", ([2],), None, protected={"a"})
    assert "a" in protected and "b" in protected


def test_estimate_bytes_counts_tensors():
    torch = pytest.importorskip("torch")
    assert estimate_bytes((torch.zeros(1000, dtype=torch.float32),)) >= 4000
    module = torch.nn.Linear(100, 100)
    assert estimate_bytes(module) >= 100 * 100 * 4


def test_combo_from_model_folder_lists_files(base_dir):
    (base_dir / "models" / "checkpoints" / "sub").mkdir(parents=True)
    (base_dir / "models" / "checkpoints" / "a.safetensors").write_bytes(b"x")
    (base_dir / "models" / "checkpoints" / "sub" / "b.ckpt").write_bytes(b"x")
    (base_dir / "models" / "checkpoints" / "notes.txt").write_text("x")
    combo = Combo("ckpt_name", folder="checkpoints")
    assert combo.choices() == ["a.safetensors", "loom-demo.safetensors", "sub/b.ckpt"]  # with the built-in one
    assert combo.check_value("sub/b.ckpt") == "sub/b.ckpt"


def test_a_long_cycle_is_reported_once_and_briefly(registry):
    """Issue 13.1: a 2,000-node cycle gave an error naming every member once per member (44 MB)."""
    count = 2000
    prompt = {str(i): {"class_type": "TestAdd", "inputs": {"a": [str((i + 1) % count), 0], "b": 1}}
              for i in range(count)}
    prompt["out"] = {"class_type": "TestOutput", "inputs": {"value": ["5", 0]}}
    result = validate_prompt(prompt, registry)
    assert not result.ok
    assert list(result.node_errors) == ["0"]  # the cycle's first node; the rest are invalid through it
    (cycle_error,) = result.node_errors["0"]["errors"]
    assert cycle_error["type"] == "dependency_cycle"
    assert "a cycle of 2000 nodes: 0, 1, 2" in cycle_error["details"] and "and 1990 more" in cycle_error["details"]
    assert result.node_errors["0"]["dependent_outputs"] == ["out"]
    assert len(json.dumps({"error": result.error, "node_errors": result.node_errors})) < 4000


def test_two_cycles_are_two_errors_and_a_long_error_list_is_capped(registry):
    prompt = {"1": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 1}},
              "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "7": {"class_type": "TestAdd", "inputs": {"a": ["7", 0], "b": 1}}}
    prompt.update({f"o{i}": {"class_type": "TestOutput", "inputs": {"value": ["1" if i % 2 else "7", 0]}}
                   for i in range(4)})
    prompt.update({f"m{i}": {"class_type": "TestOutput", "inputs": {"value": ["404", 0]}} for i in range(30)})
    result = validate_prompt(prompt, registry)
    assert {"1", "7"} <= set(result.node_errors) and "2" not in result.node_errors
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert result.error["details"].endswith("and 22 more")

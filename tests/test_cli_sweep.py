"""`loom run` sweeps: --seed ranges, --set lists (product and --zip), several workflows, names, the summary,
the contact sheet, the executor cache across runs, errors, and --server against a real `loom serve`.

The runs use ``workflows/txt2img.json`` on the tiny SD1 checkpoint at 64×64 pixels and 2 steps.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loom.server.cli import main
from loom.server.sweep import SweepError
from loom.server.sweep.plan import Dimension, Run, RunResult, Workflow, points, rename_outputs, seed_targets
from loom.server.sweep.progress import SweepProgress
from loom.server.sweep.remote import TOKEN_ENV
from loom.server.sweep.values import Definitions, InputInfo, coerce, parse_seeds, split_values
from tests.conftest import NODEPACK
from tests.fixtures_server import in_thread

REPO = Path(__file__).resolve().parents[1]
TXT2IMG = REPO / "workflows" / "txt2img.json"
TINY = ["--set", "4.ckpt_name=tiny-sd1.safetensors", "--set", "5.width=64", "--set", "5.height=64",
        "--set", "3.steps=2"]
UPSTREAM = {"4", "5", "6", "7"}  # checkpoint loader, empty latent, both prompts: none depends on seed or cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models/ folder with the tiny SD1 checkpoint, kept for the module (the loaded model stays resident)."""
    from tests.fixtures_checkpoints import FILE_NAMES, write_checkpoint
    folder = tmp_path_factory.mktemp("sweep-models")
    write_checkpoint("sd1", folder / "checkpoints" / FILE_NAMES["sd1"])
    return folder


def loom(capsys, base_dir: Path, models: Path, *argv: str, workflows=(TXT2IMG,)) -> tuple[int, str, str]:
    # in a thread of its own: --server runs an event loop, which the browser tests' Playwright loop would refuse
    code = in_thread(main, ["run", *map(str, workflows), "--base-dir", str(base_dir), "--models-dir", str(models),
                            *TINY, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def saved(base_dir: Path) -> list[str]:
    return sorted(p.name for p in (base_dir / "output").rglob("*.png"))


def seed_of(path: Path) -> int:
    with Image.open(path) as picture:
        return json.loads(picture.text["prompt"])["3"]["inputs"]["seed"]


# ------------------------------------------------------------------------------------ parsing (no model)

def test_parse_seeds_ranges_lists_and_mixes():
    assert parse_seeds("7") == [7]
    assert parse_seeds("1-4") == [1, 2, 3, 4]
    assert parse_seeds("1,5,9") == [1, 5, 9]
    assert parse_seeds("1-3, 10") == [1, 2, 3, 10]
    for bad, message in (("1-x", "not a seed or a range"), ("5-1", "runs backwards"), ("", "not a seed")):
        with pytest.raises(SweepError, match=message):
            parse_seeds(bad)


def test_split_values_by_input_type():
    number = InputInfo("cfg", "FLOAT", {"min": 0.0, "max": 100.0})
    text = InputInfo("text", "STRING", {})
    combo = InputInfo("ckpt_name", "COMBO", {}, ["a,b.safetensors", "c.safetensors"])
    assert split_values("4, 6,8", number) == ["4", "6", "8"]
    assert split_values("[4, 6.5]", number) == [4, 6.5]
    assert split_values("a red circle, yellow", text) == ["a red circle, yellow"]  # prompts keep commas
    assert split_values('["a cat, sitting", "a dog"]', text) == ["a cat, sitting", "a dog"]
    assert split_values("a,b.safetensors", combo) == ["a,b.safetensors"]
    assert split_values(r"x\,y,z", combo) == ["x,y", "z"]
    assert coerce(number, "6") == 6.0
    with pytest.raises(SweepError, match="above the maximum 100"):
        coerce(number, "101")
    with pytest.raises(SweepError, match="not one of the options: a,b.safetensors, c.safetensors"):
        coerce(combo, "d.safetensors")


def test_points_product_and_zip():
    dims = [Dimension("--seed 1-3", "seed", [1, 2, 3]), Dimension("--set x", "cfg", ["4", "6", "8"]),
            Dimension("--set y", "steps", ["2"])]
    assert len(points(dims, zipped=False)) == 9
    assert points(dims, zipped=True) == [(0, 0, 0), (1, 1, 0), (2, 2, 0)]
    dims[1].values = ["4", "6"]
    with pytest.raises(SweepError, match="seed has 3, cfg has 2 values"):
        points(dims, zipped=True)


def test_file_names_are_filesystem_safe():
    prompt = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "portraits/ComfyUI"}}}
    rename_outputs(prompt, "txt2img", {"seed": "3", "ckpt_name": "sub/dir/my model%v2.safetensors"})
    assert prompt["9"]["inputs"]["filename_prefix"] == (
        "portraits/txt2img_seed-3_ckpt_name-sub_dir_my_model_v2.safetensors")


def test_two_bars_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = SweepProgress(2, stream)
    workflow = Workflow(TXT2IMG, {"3": {"class_type": "KSampler", "inputs": {}}}, None)
    run = Run(1, workflow, {"seed": "1"}, workflow.prompt)
    progress.start_run(run, ["3"])
    progress.on_event("executing", {"node": "3"})
    progress.on_event("progress", {"value": 1, "max": 2})
    progress.end_run(RunResult(run, seconds=0.5))
    progress.close()
    text = stream.getvalue()
    assert "sweep [" in text and "] 0/2" in text and "] 1/2" in text and "txt2img.json seed=1" in text
    assert "run   [" in text and "KSampler step 1/2" in text
    assert "\x1b[1A" in text  # the two lines are redrawn in place


def test_seed_targets_are_sampler_seeds_and_what_feeds_them(registry):
    # RandomNoise (ComfyUI's custom-sampler seed) as /object_info describes it
    random_noise = {"input": {"required": {"noise_seed": ["INT", {"default": 0, "min": 0,
                                                                   "control_after_generate": True}]}}}
    definitions = Definitions({**registry.object_info(), "RandomNoise": random_noise})
    prompt = {"1": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 0}},
              "2": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
              "3": {"class_type": "PrimitiveInt", "inputs": {"value": 0}},
              "4": {"class_type": "KSampler", "inputs": {"seed": ["3", 0]}},
              "5": {"class_type": "PrimitiveInt", "inputs": {"value": 512}}}  # a width, say: not a seed
    found = [(node_id, info.name) for node_id, info in seed_targets(prompt, definitions)]
    assert found == [("1", "noise_seed"), ("2", "noise_seed"), ("3", "value")]


# ------------------------------------------------------------------------------------ runs in-process

def test_seed_range_runs_once_per_seed_with_names_and_a_summary(capsys, base_dir, models):
    code, out, err = loom(capsys, base_dir, models, "--seed", "1-2,7")
    assert code == 0, err
    names = saved(base_dir)
    assert names == ["txt2img_seed-1_00001_.png", "txt2img_seed-2_00001_.png", "txt2img_seed-7_00001_.png"]
    for seed in (1, 2, 7):
        assert seed_of(base_dir / "output" / f"txt2img_seed-{seed}_00001_.png") == seed
    pictures = [np.asarray(Image.open(base_dir / "output" / name)) for name in names]
    assert not np.array_equal(pictures[0], pictures[1])  # the seed reached the sampler
    lines = out.splitlines()
    assert lines[0].split() == ["#", "seed", "seconds", "ran", "cached", "files"]
    assert lines[1].split()[:2] == ["1", "1"] and lines[1].endswith("txt2img_seed-1_00001_.png")
    assert lines[3].split()[:2] == ["3", "7"]
    assert lines[-1].startswith("3 run(s), 3 file(s), ")
    assert "[sweep 1/3] txt2img.json seed=1" in err and "[sweep 3/3] txt2img.json seed=7" in err
    assert "cached: 4 node(s)" in err  # runs 2 and 3 reuse the model and the prompts


def test_set_lists_run_their_product_and_upstream_nodes_run_once(capsys, base_dir, models, tmp_path):
    summary = tmp_path / "summary.json"
    code, out, err = loom(capsys, base_dir, models, "--seed", "1,2", "--set", "KSampler.cfg=4,6",
                          "--set", "KSampler.sampler_name=euler,dpmpp_2m", "--summary-json", str(summary))
    assert code == 0, err
    assert len(saved(base_dir)) == 8
    assert "txt2img_seed-2_cfg-6_sampler_name-dpmpp_2m_00001_.png" in saved(base_dir)
    runs = json.loads(summary.read_text())
    assert [r["values"] for r in runs[:3]] == [{"seed": "1", "cfg": "4", "sampler_name": "euler"},
                                                {"seed": "1", "cfg": "4", "sampler_name": "dpmpp_2m"},
                                                {"seed": "1", "cfg": "6", "sampler_name": "euler"}]
    # the executor's events: the loader and the prompt encoders ran in the first run only
    assert UPSTREAM <= set(runs[0]["executed"])
    for run in runs[1:]:
        assert UPSTREAM <= set(run["cached"]) and not UPSTREAM & set(run["executed"])
        assert "3" in run["executed"]  # the sampler ran for every point
    executed = [node for run in runs for node in run["executed"]]
    assert executed.count("4") == 1 and executed.count("6") == 1 and executed.count("3") == 8
    for run in runs:
        (path,) = run["files"]
        with Image.open(path) as picture:
            node = json.loads(picture.text["prompt"])["3"]["inputs"]
        assert (str(node["seed"]), node["cfg"], node["sampler_name"]) == (
            run["values"]["seed"], float(run["values"]["cfg"]), run["values"]["sampler_name"])


def test_zip_pairs_the_lists(capsys, base_dir, models):
    code, _, err = loom(capsys, base_dir, models, "--seed", "1-3", "--set", "KSampler.cfg=4,5,6", "--zip")
    assert code == 0, err
    assert saved(base_dir) == ["txt2img_seed-1_cfg-4_00001_.png", "txt2img_seed-2_cfg-5_00001_.png",
                               "txt2img_seed-3_cfg-6_00001_.png"]
    code, out, err = loom(capsys, base_dir, models, "--seed", "1-3", "--set", "KSampler.cfg=4,5", "--zip")
    assert code == 2 and out == ""
    assert err == "error: --zip pairs lists of one length, but seed has 3, cfg has 2 values\n"


def test_several_workflows_share_the_cache(capsys, base_dir, models, tmp_path):
    assert main(["convert", str(TXT2IMG)]) == 0
    api = tmp_path / "as-api.json"
    api.write_text(capsys.readouterr().out)
    summary = tmp_path / "summary.json"
    code, out, err = loom(capsys, base_dir, models, "--seed", "1,2", "--summary-json", str(summary),
                          workflows=(TXT2IMG, api))
    assert code == 0, err
    assert saved(base_dir) == ["as-api_seed-1_00001_.png", "as-api_seed-2_00001_.png",
                               "txt2img_seed-1_00001_.png", "txt2img_seed-2_00001_.png"]
    assert out.splitlines()[0].split() == ["#", "workflow", "seed", "seconds", "ran", "cached", "files"]
    runs = json.loads(summary.read_text())
    assert [node for run in runs for node in run["executed"]].count("4") == 1  # one model load for both


def test_contact_sheet_two_dimensions_is_a_labelled_table(capsys, base_dir, models, tmp_path):
    sheet_path = tmp_path / "sheet.png"
    code, out, err = loom(capsys, base_dir, models, "--seed", "1,2", "--set", "KSampler.cfg=4,6",
                          "--contact-sheet", str(sheet_path))
    assert code == 0, err
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    height, width = sheet.shape[:2]
    assert f"contact sheet: {sheet_path} ({width}x{height})" in out
    left, top = width - 2 * 64, height - 2 * 64  # rows: seeds, columns: cfg; labels left and on top
    assert left > 0 and top > 0
    cells = {(r, c): sheet[top + 64 * r: top + 64 * (r + 1), left + 64 * c: left + 64 * (c + 1)]
             for r in range(2) for c in range(2)}
    for (r, c), cell in cells.items():
        image = np.asarray(Image.open(base_dir / "output" / f"txt2img_seed-{r + 1}_cfg-{4 + 2 * c}_00001_.png"))
        assert np.array_equal(cell, image), (r, c)
    header, side = sheet[:top, left:], sheet[top:, :left]
    assert (header.min(axis=2) < 100).any() and (side.min(axis=2) < 100).any()  # text drawn in the strips
    # the column labels sit over their columns: ink over each one
    assert all((header[:, 64 * c: 64 * (c + 1)].min(axis=2) < 100).any() for c in range(2))
    assert all((side[64 * r: 64 * (r + 1)].min(axis=2) < 100).any() for r in range(2))


def test_contact_sheet_one_dimension_is_a_row_with_labels_under(capsys, base_dir, models, tmp_path):
    sheet_path = tmp_path / "row.png"
    code, _, err = loom(capsys, base_dir, models, "--seed", "1-3", "--contact-sheet", str(sheet_path))
    assert code == 0, err
    sheet = np.asarray(Image.open(sheet_path).convert("RGB"))
    assert sheet.shape[1] == 3 * 64 and sheet.shape[0] > 64  # three cells, each with a label strip below
    for n in range(3):
        image = np.asarray(Image.open(base_dir / "output" / f"txt2img_seed-{n + 1}_00001_.png"))
        assert np.array_equal(sheet[:64, 64 * n: 64 * (n + 1)], image)
        assert (sheet[64:, 64 * n: 64 * (n + 1)].min(axis=2) < 100).any()


def test_one_value_is_a_plain_run(capsys, base_dir, models):
    """Without sweep options ``loom run`` is unchanged: a text with commas is one value, names stay."""
    code, out, err = loom(capsys, base_dir, models, "--seed", "5", "--set", "6.text=a red circle, a square")
    assert code == 0, err
    assert saved(base_dir) == ["ComfyUI_00001_.png"] and out.strip().endswith("ComfyUI_00001_.png")
    with Image.open(base_dir / "output" / "ComfyUI_00001_.png") as picture:
        prompt = json.loads(picture.text["prompt"])
    assert prompt["6"]["inputs"]["text"] == "a red circle, a square" and prompt["3"]["inputs"]["seed"] == 5
    assert "[sweep" not in err


@pytest.mark.parametrize("option, message", [
    ("Nope.cfg=1,2", "error: --set 'Nope.cfg=1,2': txt2img.json: no node with id, title or type 'Nope'; the "
                     "workflow has: 3 KSampler, 4 CheckpointLoaderSimple 'Load Checkpoint',"),
    ("KSampler.nope=1,2", "error: --set 'KSampler.nope=1,2': node 3 (KSampler) has no input 'nope'; its inputs "
                          "are: model, seed, steps, cfg, sampler_name,"),
    ("CLIPTextEncode.text=[\"a\",\"b\"]", "matches 2 nodes (6 CLIPTextEncode 'Positive Prompt', 7 CLIPTextEncode "
                                          "'Negative Prompt'); name one by its id or a unique title"),
    ("KSampler.cfg=4,x", "error: --set KSampler.cfg=4,x: node 3 (KSampler) input 'cfg': 'x' is not a number"),
    ("KSampler.steps=0,2", "error: --set KSampler.steps=0,2: node 3 (KSampler) input 'steps': 0 is below the "
                           "minimum 1"),
    ("KSampler.sampler_name=euler,eulr", "input 'sampler_name': 'eulr' is not one of the options: euler,"),
    ("3.model=1,2", "input 'model': it takes a link (MODEL), not a value"),
])
def test_bad_sweeps_are_clear_errors_before_anything_runs(capsys, base_dir, models, option, message):
    code, out, err = loom(capsys, base_dir, models, "--set", option)
    assert code == 2 and out == "" and message in err
    assert saved(base_dir) == []


def test_seed_sweep_needs_a_seed_input(capsys, base_dir, tmp_path):
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 4}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    path = tmp_path / "noseed.json"
    path.write_text(json.dumps(prompt))
    code = main(["run", str(path), "--base-dir", str(base_dir), "--nodes", str(NODEPACK), "--seed", "1-2"])
    err = capsys.readouterr().err
    assert code == 2 and "--seed: noseed.json has no seed input" in err
    code = main(["run", str(path), "--base-dir", str(base_dir), "--nodes", str(NODEPACK), "--seed", "1-x"])
    assert code == 2 and "is not a seed or a range" in capsys.readouterr().err


def test_values_sweep_on_the_test_pack_text_outputs(capsys, base_dir, tmp_path):
    """A sweep over a workflow that saves nothing: the table lists the runs; boolean and combo coercion."""
    prompt = {"1": {"class_type": "TestChoice", "inputs": {"choice": "alpha"}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    path = tmp_path / "choice.json"
    path.write_text(json.dumps(prompt))
    code = main(["run", str(path), "--base-dir", str(base_dir), "--nodes", str(NODEPACK),
                 "--set", "TestChoice.choice=alpha,gamma"])
    out = capsys.readouterr().out
    assert code == 0
    first, second = out.splitlines()[1:3]
    assert first.split()[:2] == ["1", "alpha"] and first.endswith("node 2: alpha")
    assert second.split()[:2] == ["2", "gamma"] and second.endswith("node 2: gamma")


def test_a_failing_run_does_not_stop_the_sweep_and_exits_1(capsys, base_dir, tmp_path):
    prompt = {"1": {"class_type": "TestConstInt", "inputs": {"value": 1}},
              "2": {"class_type": "TestRaise", "inputs": {"value": ["1", 0], "message": "kaput"}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    path = tmp_path / "fails.json"
    path.write_text(json.dumps(prompt))
    code = main(["run", str(path), "--base-dir", str(base_dir), "--nodes", str(NODEPACK),
                 "--set", "TestConstInt.value=1,2"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = out.splitlines()[1:3]
    assert all(row.endswith("error: node 2 (TestRaise): kaput") for row in rows), out
    assert out.splitlines()[-1].endswith("2 failed") and err.count("error in") == 2


# ------------------------------------------------------------------------------------ on a `loom serve`

TOKEN = "sweep-test-token-0123456789"


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    """A real ``loom serve`` process (own base dir, the tiny model, a token) on a loopback port."""
    from tests.fixtures_server import ServerProcess
    base = tmp_path_factory.mktemp("sweep-server")
    server = ServerProcess(base, "--models-dir", str(models), "--token", TOKEN)
    yield server, base
    server.terminate()


def test_server_sweep_queues_runs_and_downloads_outputs(capsys, base_dir, models, tmp_path, monkeypatch, served):
    server, server_base = served
    summary = tmp_path / "summary.json"
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    code, _, err = loom(capsys, base_dir, models, "--seed", "1,2", "--server", server.url)
    assert code == 1 and "Authentication required" in err and "$LOOM_TOKEN" in err

    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sheet = tmp_path / "sheet.png"
    code, out, err = loom(capsys, base_dir, models, "--seed", "1,2", "--set", "KSampler.cfg=4,6", "--server",
                          server.url, "--summary-json", str(summary), "--contact-sheet", str(sheet))
    assert code == 0, err + "".join(server.lines)
    names = ["txt2img_seed-1_cfg-4_00001_.png", "txt2img_seed-1_cfg-6_00001_.png",
             "txt2img_seed-2_cfg-4_00001_.png", "txt2img_seed-2_cfg-6_00001_.png"]
    assert saved(base_dir) == names  # downloaded through /view into this side's output folder
    for name in names:
        assert (base_dir / "output" / name).read_bytes() == (server_base / "output" / name).read_bytes()
    runs = json.loads(summary.read_text())
    assert all(run["status"] == "success" and run["prompt_id"] for run in runs)
    assert UPSTREAM <= set(runs[0]["executed"])  # the server's cache: the model loaded once
    assert all(UPSTREAM <= set(run["cached"]) and "3" in run["executed"] for run in runs[1:])
    assert "[sweep 4/4] txt2img.json seed=2 cfg=6" in err and "KSampler (node 3)" in err
    assert Image.open(sheet).size[0] > 2 * 64
    # a value not among the server's options (its model folder lacks the file): exit 2 before queueing
    code, out, err = loom(capsys, base_dir, models, "--seed", "3,4", "--set", "4.ckpt_name=missing.safetensors",
                          "--server", server.url)
    assert code == 2 and "ckpt_name" in err and "missing.safetensors" in err

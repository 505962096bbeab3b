"""Conformance with ComfyUI: the shared cases run through Loom's executor and match ComfyUI's outputs.

The checkpoint is a deterministic random-weight SD1.5 file made by ``shared/conformance/make_checkpoint.py``
(2.1 GB); it is built once and kept in ``$LOOM_CONFORMANCE_CACHE`` (default ``~/.cache/loom-conformance``).
Each case's API prompt is validated and executed by :class:`server.executor.Executor` in a fresh base
directory, its SaveImage/SaveLatent outputs are renamed ``CASE.N.png`` / ``CASE.latent`` and
``shared/conformance/compare.py`` judges them against ComfyUI's references (PSNR >= 40 dB, latent relative
error <= 1e-3). Cases that need nodes Loom does not have yet are skipped, naming the issue that adds them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loom.nodes.kernel.folders import file_sha256
from tests.conftest import CONFORMANCE, require_shared

pytestmark = pytest.mark.conformance

CHECKPOINT = "sd15-conformance-s0.safetensors"
README_SHA256 = "1bd515784807d187fd125e04163cba97ceea48a31e4705e250c4b0623bb945e6"
CORE_CASES = ["txt2img_euler_normal", "txt2img_dpmpp2m_karras_clipskip_batch2", "img2img_ddim"]
OTHER_CASES = ["lora_kohya_single", "controlnet_advanced"]
CUSTOM_SAMPLING_CASES = ["custom_advanced_cfgguider_karras"]
NODES_FROM_ISSUE = {"LoraLoader": "issue 4 (LoRA and ControlNet)", "ControlNetLoader": "issue 4 (LoRA and ControlNet)",
                    "ControlNetApplyAdvanced": "issue 4 (LoRA and ControlNet)"}

require_shared(CONFORMANCE / "compare.py")


def _cache_dir() -> Path:
    return Path(os.environ.get("LOOM_CONFORMANCE_CACHE") or Path.home() / ".cache" / "loom-conformance")


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The conformance checkpoint, built on first use and verified against the README's sha256."""
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / CHECKPOINT
    if not path.is_file():
        partial = cache / (CHECKPOINT + ".partial")
        subprocess.run([sys.executable, str(CONFORMANCE / "make_checkpoint.py"), str(CONFORMANCE / "sd15-keys.json"),
                        str(partial), "--seed", "0"], check=True, timeout=1200)
        partial.replace(path)
    digest = file_sha256(path)
    assert digest == README_SHA256, (f"{path} has sha256 {digest}, not the README's {README_SHA256}: "
                                     "delete it to rebuild (the header bytes depend on the safetensors version)")
    return path


@pytest.fixture(scope="module")
def conformance_env(tmp_path_factory, checkpoint):
    """A base directory with the checkpoint in models/checkpoints and the shared inputs in input/."""
    from loom.nodes.kernel import folders

    base = tmp_path_factory.mktemp("conformance-base")
    (base / "models" / "checkpoints").mkdir(parents=True)
    target = base / "models" / "checkpoints" / CHECKPOINT
    try:  # a hard link: model paths may not resolve outside their folder, so a symlink would be refused
        os.link(checkpoint, target)
    except OSError:
        shutil.copy(checkpoint, target)
    (base / "input").mkdir()
    for item in (CONFORMANCE / "inputs").iterdir():
        shutil.copy(item, base / "input" / item.name)
    previous = folders.current()
    folders.configure(base)
    from loom.nodes.kernel.schema import default_registry
    from loom.server.executor import Executor

    registry = default_registry()
    yield base, registry, Executor(registry)
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


# The LoRA and ControlNet files of the lora_*/controlnet_* cases, made by the README's commands and cached
# next to the checkpoint: (models folder, file name, generator, manifest, arguments). Their tensors are
# deterministic; the header's metadata order is not, so they are not checked by sha256.
CASE_MODELS = [
    ("loras", "sd15-conformance-lora-a.safetensors", "make_lora.py", "sd15-kohya-lora-modules.json", ["--seed", "1"]),
    ("loras", "sd15-conformance-lora-b.safetensors", "make_lora.py", "sd15-kohya-lora-modules.json",
     ["--seed", "2", "--rank", "8", "--alpha", "8"]),
    ("controlnet", "sd15-conformance-controlnet.safetensors", "make_checkpoint.py", "sd15-controlnet-keys.json",
     ["--seed", "3"]),
]


@pytest.fixture(scope="module")
def case_models(conformance_env):
    """The LoRA/ControlNet files in the conformance base directory's models/loras and models/controlnet."""
    base = conformance_env[0]
    for folder, name, script, manifest, arguments in CASE_MODELS:
        path = _cache_dir() / name
        if not path.is_file():
            partial = path.with_name(name + ".partial")
            subprocess.run([sys.executable, str(CONFORMANCE / script), str(CONFORMANCE / manifest), str(partial),
                            *arguments], check=True, timeout=1200)
            partial.replace(path)
        target = base / "models" / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copy(path, target)
    return base


def _missing_nodes(prompt: dict, registry) -> list[str]:
    return sorted({node["class_type"] for node in prompt.values() if node["class_type"] not in registry})


def _run_case(case: str, env, tmp_path: Path) -> str:
    from loom.server.validation import validate_prompt

    base, registry, executor = env
    prompt = json.loads((CONFORMANCE / "cases" / f"{case}.json").read_text())
    missing = _missing_nodes(prompt, registry)
    if missing:
        issues = sorted({NODES_FROM_ISSUE.get(name, "an open issue") for name in missing})
        pytest.skip(f"{case} needs {', '.join(missing)}, added by {', '.join(issues)}")
    validation = validate_prompt(prompt, registry)
    assert validation.ok, f"{case} does not validate: {validation.error} {validation.node_errors}"
    result = executor.execute(prompt, f"conformance-{case}", validation=validation)
    assert result.status == "success", f"{case} failed: {result.error}"

    out = tmp_path / "out"
    out.mkdir()
    refs = tmp_path / "refs"
    refs.mkdir()
    image_index = 0
    for node_id in sorted(result.outputs, key=lambda n: int(n) if n.isdigit() else n):
        ui = result.outputs[node_id]
        for entry in ui.get("images", []):
            source = base / "output" / entry.get("subfolder", "") / entry["filename"]
            shutil.copy(source, out / f"{case}.{image_index}.png")
            image_index += 1
        for entry in ui.get("latents", []):
            shutil.copy(base / "output" / entry.get("subfolder", "") / entry["filename"], out / f"{case}.latent")
    for ref in (CONFORMANCE / "refs").iterdir():
        if ref.name.startswith(case + "."):
            os.symlink(ref, refs / ref.name)
    report = subprocess.run([sys.executable, str(CONFORMANCE / "compare.py"), str(refs), str(out)],
                            capture_output=True, text=True, timeout=120)
    print(report.stdout)
    assert report.returncode == 0, f"{case} does not match ComfyUI:\n{report.stdout}{report.stderr}"
    return report.stdout


@pytest.mark.parametrize("case", CORE_CASES)
def test_core_case_matches_comfyui(case, conformance_env, tmp_path):
    _run_case(case, conformance_env, tmp_path)


@pytest.mark.parametrize("case", OTHER_CASES)
def test_lora_and_controlnet_cases_match_comfyui(case, conformance_env, case_models, tmp_path):
    _run_case(case, conformance_env, tmp_path)


@pytest.mark.parametrize("case", CUSTOM_SAMPLING_CASES)
def test_custom_sampling_case_matches_comfyui(case, conformance_env, tmp_path):
    _run_case(case, conformance_env, tmp_path)


# The SD3 all-in-one checkpoint of the sd3_* cases (README "SD3 and FLUX.1 files"), built once and cached
# next to the SD1.5 one, verified by its sha256.
SD3_CHECKPOINT = "sd3-conformance-s4.safetensors"
SD3_SHA256 = "d63ebfe2b6b24d027b2194ec98dfb009ade44e248a95ec4ceb4fb019896e84ff"
SD3_CASES = ["sd3_txt2img_euler_sgm"]


@pytest.fixture(scope="module")
def sd3_checkpoint(conformance_env) -> Path:
    """The SD3 conformance checkpoint in the conformance base directory's models/checkpoints."""
    path = _cache_dir() / SD3_CHECKPOINT
    if not path.is_file():
        partial = path.with_name(SD3_CHECKPOINT + ".partial")
        subprocess.run([sys.executable, str(CONFORMANCE / "make_checkpoint.py"), str(CONFORMANCE / "sd3-keys.json"),
                        str(partial), "--seed", "4"], check=True, timeout=1200)
        partial.replace(path)
    digest = file_sha256(path)
    assert digest == SD3_SHA256, f"{path} has sha256 {digest}, not the README's {SD3_SHA256}: delete it to rebuild"
    target = conformance_env[0] / "models" / "checkpoints" / SD3_CHECKPOINT
    if not target.exists():
        try:
            os.link(path, target)
        except OSError:
            shutil.copy(path, target)
    return target


@pytest.mark.parametrize("case", SD3_CASES)
def test_sd3_case_matches_comfyui(case, conformance_env, sd3_checkpoint, tmp_path):
    _run_case(case, conformance_env, tmp_path)


# The FLUX dev case's split model files (README "SD3 and FLUX.1 files"), built once, cached and verified by
# sha256 in tests/fixtures_flux.py, linked into the ComfyUI folders the case's loaders read.
FLUX_CASES = ["flux_dev_custom_advanced"]
FLUX_FILES = [("diffusion_models", "flux-dev-conformance-s5.safetensors"),
              ("text_encoders", "clip-l-conformance-s7.safetensors"),
              ("text_encoders", "t5xxl-2layer-conformance-s8.safetensors"),
              ("vae", "flux-vae-conformance-s9.safetensors")]


@pytest.fixture(scope="module")
def flux_files(conformance_env) -> Path:
    from tests.fixtures_flux import conformance_path

    base = conformance_env[0]
    for folder, name in FLUX_FILES:
        target = base / "models" / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(conformance_path(name), target)
            except OSError:
                shutil.copy(conformance_path(name), target)
    return base


@pytest.mark.parametrize("case", FLUX_CASES)
def test_flux_case_matches_comfyui(case, conformance_env, flux_files, tmp_path):
    _run_case(case, conformance_env, tmp_path)

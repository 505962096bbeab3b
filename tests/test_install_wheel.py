"""A regular (non-editable) install works: the wheel carries the editor, the example workflows and the data
files, and the installed ``loom`` serves and runs from any directory.

The wheel is built from a copy of the source (``pip wheel --no-deps --no-build-isolation``: nothing is
downloaded; setuptools comes from the test extra) and installed with ``--no-deps`` into a scratch virtualenv
whose only view of the running environment is a ``.pth`` line naming its site-packages. Path lines in a
``.pth`` file do not run the ``.pth`` files of the folder they add, so the editable install's finder stays
out and every ``loom`` module comes from the wheel.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SOURCES = ("pyproject.toml", PYPROJECT["project"]["readme"],
           *sorted({folder.split("/")[0] for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}))
"""What ``pip install .`` reads from the checkout: pyproject.toml, the readme, the package folders."""
START_TIMEOUT_S = 90


@dataclass
class ScratchInstall:
    """The built wheel and the scratch virtualenv it is installed in."""

    wheel: Path
    prefix: Path
    python: Path
    loom: Path
    site_packages: Path


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, (f"{' '.join(map(str, command))} exited {result.returncode}:\n"
                                    f"{result.stdout}\n{result.stderr}")
    return result


def _outer_site_packages() -> list[str]:
    """The running environment's site-packages folders (where the dependencies are installed)."""
    folders = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    return list(dict.fromkeys(folder for folder in folders if os.path.isdir(folder)))


def _clean_env() -> dict[str, str]:
    """The environment for the installed ``loom``: no PYTHONPATH, no way back into the checkout."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> ScratchInstall:
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("building the wheel needs setuptools in this environment: pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=ignore)
        else:
            shutil.copy2(origin, source / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--quiet", "--wheel-dir", str(dist), str(source)])
    wheels = list(dist.glob("loom-*.whl"))
    assert len(wheels) == 1, f"expected one loom wheel in {dist}, found {wheels}"

    prefix = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(prefix)])
    python = prefix / "bin" / "python"
    site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                         .stdout.strip())
    (site_packages / "_loom_test_outer_env.pth").write_text("\n".join(_outer_site_packages()) + "\n")
    # pip itself comes from the running environment through that .pth line; --ignore-installed keeps it
    # from taking the editable loom it can see there as already installed
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--quiet",
          str(wheels[0])], cwd=root, env=_clean_env())
    loom = prefix / "bin" / "loom"
    assert loom.is_file(), "installing the wheel made no `loom` command"
    return ScratchInstall(wheel=wheels[0], prefix=prefix, python=python, loom=loom, site_packages=site_packages)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    """A working directory outside the checkout, with nothing in it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_the_wheel_carries_the_editor_workflows_and_data_files(installed: ScratchInstall) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    wanted = {"loom/web/index.html", "loom/web/app.js", "loom/workflows/txt2img.json",
              "loom/nodes/runtime/data/bpe_simple_vocab_16e6.txt.gz", "loom/server/cli.py", "loom/nodes/kernel/schema.py",
              "loom/nodes/runtime/data/t5-v1_1-tokenizer/tokenizer.json.gz",
              "loom/nodes/runtime/data/t5-v1_1-tokenizer/LICENSE", "loom/nodes/runtime/data/t5-v1_1-tokenizer/README.md"}
    builtin = REPO / "nodes" / "builtin_models"
    wanted |= {"loom/nodes/builtin_models/" + path.relative_to(builtin).as_posix()
               for path in builtin.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    wanted |= {"loom/workflows/" + path.name for path in (REPO / "workflows").iterdir() if path.is_file()}
    missing = sorted(wanted - names)
    assert not missing, f"{installed.wheel.name} lacks {missing}"
    stray = sorted(name for name in names if not re.match(r"loom/|loom-[^/]+\.dist-info/", name))
    assert not stray, f"{installed.wheel.name} installs files outside loom/: {stray}"
    assert (REPO / "web" / "testing" / "hook.js").is_file()  # so its absence below is the wheel's doing
    test_only = sorted(name for name in names if name.startswith("loom/web/testing/"))
    assert not test_only, f"{installed.wheel.name} carries the browser tests' hook: {test_only}"


def test_the_installed_package_imports_from_the_scratch_site_packages(installed: ScratchInstall,
                                                                       empty_dir: Path) -> None:
    probe = ("import json, loom.server, loom.nodes.kernel.folders as f; print(json.dumps({'server': loom.server.__file__, "
             "'web': str(f.WEB_DIR), 'workflows': str(f.EXAMPLE_WORKFLOWS_DIR)}))")
    found = json.loads(_run([str(installed.python), "-c", probe], cwd=empty_dir, env=_clean_env()).stdout)
    for key, path in found.items():
        assert Path(path).resolve().is_relative_to(installed.site_packages.resolve()), \
            f"loom's {key} resolves to {path}, not under the scratch install {installed.site_packages}"
    assert (Path(found["web"]) / "index.html").is_file()
    assert (Path(found["workflows"]) / "txt2img.json").is_file()


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_installed_loom_serves_the_editor_and_its_default_workflow(installed: ScratchInstall, empty_dir: Path,
                                                                    tmp_path: Path) -> None:
    base = tmp_path / "base"
    proc = subprocess.Popen([str(installed.loom), "serve", "--no-browser", "--port", "0", "--base-dir", str(base)],
                            cwd=empty_dir, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and not url:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"Loom is running at (http://[^/\s]+)", line)
            url = match.group(1) if match else ""
        assert url, "the installed `loom serve` did not start:\n" + "".join(lines)
        printed = "".join(lines)
        # a fresh base dir holds no checkpoint: the terminal says where they go (server/notices.py)
        assert "You have no checkpoint of your own yet" in printed, printed
        assert str(base.resolve() / "models" / "checkpoints") in printed and "--models-dir" in printed, printed
        assert "extra_model_paths.yaml" in printed and "loom-demo.safetensors" in printed, printed

        status, _, body = _get(url + "/api/health")
        assert status == 200 and json.loads(body) == {"status": "ok"}
        status, content_type, body = _get(url + "/")
        assert status == 200 and content_type.startswith("text/html")
        assert b'<script type="module"' in body or b"app.js" in body, body[:300]
        status, _, body = _get(url + "/app.js")
        assert status == 200 and b"import" in body
        with pytest.raises(urllib.error.HTTPError) as missing:  # `?test-hook` warns and the editor runs on
            _get(url + "/testing/hook.js")
        assert missing.value.code == 404
        status, content_type, body = _get(url + "/api/workflows/default")
        assert status == 200 and content_type.startswith("application/json")
        workflow = json.loads(body)
        assert {node["type"] for node in workflow["nodes"]} >= {"CheckpointLoaderSimple", "KSampler", "SaveImage"}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not (empty_dir / "models").exists(), "loom serve wrote into the working directory, not --base-dir"


def test_installed_loom_runs_the_default_workflow(installed: ScratchInstall, empty_dir: Path,
                                                   tmp_path: Path) -> None:
    workflow = installed.site_packages / "loom" / "workflows" / "txt2img.json"
    base = tmp_path / "base"
    result = subprocess.run([str(installed.loom), "run", str(workflow), "--base-dir", str(base)], cwd=empty_dir,
                            env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"loom run exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    pictures = sorted((base / "output").rglob("*.png"))
    assert pictures, f"loom run made no PNG under {base / 'output'}:\n{result.stdout}"
    from PIL import Image

    from tools import demo_scenes
    with Image.open(pictures[0]) as picture:
        caption = json.loads(picture.text["prompt"])["6"]["inputs"]["text"]
        assert demo_scenes.check(picture, caption).ok, caption  # a picture of its caption, not noise

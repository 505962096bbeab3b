"""The new-user notice: with no checkpoint of their own, ``loom serve`` and the editor say where models go
and whether the built-in demo model stands in (server/notices.py, ``GET /api/notices``)."""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from loom.nodes.kernel import folders
from loom.server import notices
from tests.fixtures_server import LiveServer, run_async


@pytest.fixture
def builtin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the built-in models folder (empty: no demo model until a test puts one there)."""
    folder = tmp_path / "builtin_models"
    (folder / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(folders, "BUILTIN_MODELS_DIR", folder)
    return folder


def _put_demo(builtin_dir: Path) -> None:
    (builtin_dir / "checkpoints" / notices.DEMO_CHECKPOINT).write_bytes(b"demo")


def test_no_checkpoint_says_where_models_go_and_that_the_demo_model_is_there(base_dir: Path,
                                                                             builtin_dir: Path) -> None:
    _put_demo(builtin_dir)
    [notice] = notices.startup_notices()
    assert notice["id"] == "no-checkpoint" and notice["level"] == "info"
    text = notice["text"]
    assert str(base_dir / "models" / "checkpoints") in text
    assert "--models-dir" in text and "extra_model_paths.yaml" in text
    assert "built-in demo model loom-demo.safetensors is available" in text
    assert "default workflow uses it" in text


def test_without_the_demo_model_the_notice_warns_that_nothing_can_load(base_dir: Path,
                                                                       builtin_dir: Path) -> None:
    [notice] = notices.startup_notices()
    assert notice["level"] == "warn"
    assert "loom-demo.safetensors is not installed" in notice["text"]
    assert "--models-dir" in notice["text"]


def test_the_demo_model_alone_is_not_a_checkpoint_of_ones_own(base_dir: Path, builtin_dir: Path) -> None:
    _put_demo(builtin_dir)
    assert folders.list_files("checkpoints") == [notices.DEMO_CHECKPOINT]
    assert not notices.has_user_checkpoint()
    assert builtin_dir / "checkpoints" not in notices.user_checkpoint_folders()


@pytest.mark.parametrize("where", ["mine.safetensors", "sd15/mine.ckpt"])
def test_a_checkpoint_in_the_models_folder_silences_the_notice(base_dir: Path, builtin_dir: Path,
                                                               where: str) -> None:
    path = base_dir / "models" / "checkpoints" / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    assert notices.startup_notices() == []


def test_files_that_are_not_models_do_not_count(base_dir: Path, builtin_dir: Path) -> None:
    checkpoints = base_dir / "models" / "checkpoints"
    (checkpoints / "put_checkpoints_here").write_text("")
    (checkpoints / ".hidden.safetensors").write_bytes(b"x")
    (checkpoints / "notes.txt").write_text("todo")
    assert [n["id"] for n in notices.startup_notices()] == ["no-checkpoint"]


def test_a_checkpoint_on_an_extra_model_path_silences_the_notice(base_dir: Path, builtin_dir: Path,
                                                                 tmp_path: Path) -> None:
    elsewhere = tmp_path / "comfy" / "models" / "checkpoints"
    elsewhere.mkdir(parents=True)
    (elsewhere / "theirs.safetensors").write_bytes(b"weights")
    yaml_path = tmp_path / "extra_model_paths.yaml"
    yaml_path.write_text(f"comfyui:\n  base_path: {tmp_path / 'comfy'}\n  checkpoints: models/checkpoints\n")
    assert notices.startup_notices() != []
    folders.load_extra_model_paths(yaml_path)
    assert notices.startup_notices() == []


def test_the_models_dir_option_is_where_the_notice_points(tmp_path: Path, builtin_dir: Path) -> None:
    previous = folders.current()
    try:
        folders.configure(tmp_path / "base", tmp_path / "ComfyUI" / "models")
        [notice] = notices.startup_notices()
        assert str(tmp_path / "ComfyUI" / "models" / "checkpoints") in notice["text"]
    finally:
        folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


def test_the_editor_gets_the_notices_from_the_api_and_they_follow_the_folders(base_dir: Path, builtin_dir: Path,
                                                                              registry) -> None:
    from loom.server.app import ServerConfig

    _put_demo(builtin_dir)
    server = LiveServer(ServerConfig(registry=registry, start_worker=False))

    async def get() -> tuple[list, list]:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/api/notices") as response:
                assert response.status == 200
                first = json.loads(await response.text())
            (base_dir / "models" / "checkpoints" / "mine.safetensors").write_bytes(b"weights")
            async with session.get(server.url + "/notices") as response:
                assert response.status == 200
                return first, await response.json()

    try:
        first, after = run_async(get())
    finally:
        server.close()
    assert [n["id"] for n in first] == ["no-checkpoint"]
    assert "loom-demo.safetensors is available" in first[0]["text"]
    assert after == []

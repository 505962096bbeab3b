"""ComfyUI's user-data API (``/userdata``, ``/userdata/{file}``, ``.../move/{dest}``) against a real server:
ComfyUI's names, shapes and status codes, files kept under ``<user_dir>/default``, atomic writes, and
hostile names (traversal, absolute paths, symlinks out, control bytes, over-long names) refused with a 4xx."""
from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.fixtures_server import LiveServer

TOKEN = "userdata-token-0123456789"


@pytest.fixture(scope="module")
def servers(tmp_path_factory, registry):
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig

    previous = folders.current()
    base = tmp_path_factory.mktemp("userdata_base")
    folders.configure(base)
    open_server = LiveServer(ServerConfig(registry=registry, user_dir=base / "user"))
    locked = LiveServer(ServerConfig(registry=registry, token=TOKEN, db_path=base / "locked.sqlite3",
                                     user_dir=base / "locked-user"))
    yield open_server, locked, base
    open_server.close()
    locked.close()
    folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)


@pytest.fixture
def live(servers):
    server, _, base = servers
    root = base / "user" / "default"
    for path in sorted(root.rglob("*"), reverse=True) if root.exists() else []:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    server.root = root
    server.base = base
    return server


def call(server, method: str, path: str, data: bytes | None = None, headers: dict | None = None):
    """``(status, body)``; ``path`` is sent exactly as written (already URL-encoded, no normalising)."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        call.headers = dict(response.getheaders())
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        return response.status, body
    finally:
        connection.close()


WORKFLOW = json.dumps({"last_node_id": 0, "nodes": [], "links": [], "version": 0.4}).encode()


def test_save_read_list_move_delete_in_comfyuis_shapes(live):
    for prefix in ("", "/api"):
        assert call(live, "POST", f"{prefix}/userdata/workflows%2Fmy.json", WORKFLOW) == (200, "workflows/my.json")
        assert (live.root / "workflows" / "my.json").read_bytes() == WORKFLOW
        assert call(live, "GET", f"{prefix}/userdata/workflows%2Fmy.json") == (200, json.loads(WORKFLOW))
        assert call.headers["Content-Disposition"] == "attachment"
        assert call.headers["X-Content-Type-Options"] == "nosniff"
        assert call(live, "GET", f"{prefix}/userdata?dir=workflows") == (200, ["my.json"])

        # overwrite=false refuses a taken name; the default overwrites
        assert call(live, "POST", f"{prefix}/userdata/workflows%2Fmy.json?overwrite=false", b"{}")[0] == 409
        assert (live.root / "workflows" / "my.json").read_bytes() == WORKFLOW
        status, info = call(live, "POST", f"{prefix}/userdata/workflows%2Fmy.json?full_info=true", b"{}")
        assert status == 200 and set(info) == {"path", "size", "modified", "created"}
        assert info["path"] == "workflows/my.json" and info["size"] == 2 and isinstance(info["modified"], int)
        assert info["modified"] > 1e12  # milliseconds, as ComfyUI's get_file_info

        # move (rename), overwrite=false onto a taken name, full_info
        call(live, "POST", f"{prefix}/userdata/workflows%2Fother.json", b"[1]")
        assert call(live, "POST", f"{prefix}/userdata/workflows%2Fmy.json/move/workflows%2Fother.json?overwrite=false")[0] == 409
        assert call(live, "POST", f"{prefix}/userdata/workflows%2Fmy.json/move/workflows%2Fsub%2Frenamed.json") == \
            (200, "workflows/sub/renamed.json")
        assert not (live.root / "workflows" / "my.json").exists()
        assert call(live, "GET", f"{prefix}/userdata?dir=workflows&recurse=true") == (200, ["other.json", "sub/renamed.json"])
        assert call(live, "GET", f"{prefix}/userdata?dir=workflows&recurse=true&split=true") == \
            (200, [["other.json", "other.json"], ["sub/renamed.json", "sub", "renamed.json"]])
        status, info = call(live, "POST", f"{prefix}/userdata/workflows%2Fother.json/move/workflows%2Fsub%2Frenamed.json?full_info=true")
        assert status == 200 and info["path"] == "workflows/sub/renamed.json" and info["size"] == 3
        assert call(live, "POST", f"{prefix}/userdata/workflows%2Fmissing.json/move/workflows%2Fx.json")[0] == 404

        # delete
        assert call(live, "DELETE", f"{prefix}/userdata/workflows%2Fsub%2Frenamed.json") == (204, None)
        assert call(live, "DELETE", f"{prefix}/userdata/workflows%2Fsub%2Frenamed.json")[0] == 404
        assert call(live, "GET", f"{prefix}/userdata/workflows%2Fsub%2Frenamed.json")[0] == 404
        assert call(live, "GET", f"{prefix}/userdata?dir=workflows&recurse=true") == (200, [])


def test_writes_are_atomic_and_leave_no_temporary_file(live):
    big = b"x" * (3 * 1024 * 1024)
    assert call(live, "POST", "/userdata/workflows%2Fbig.json", big)[0] == 200
    assert call(live, "POST", "/userdata/workflows%2Fbig.json", b"{}")[0] == 200
    assert sorted(p.name for p in (live.root / "workflows").iterdir()) == ["big.json"]
    assert call(live, "GET", "/userdata?dir=workflows&full_info=true")[1][0]["size"] == 2
    # a write in progress (hidden) is never listed
    (live.root / "workflows" / ".big.json.1.2.part").write_bytes(b"half")
    assert call(live, "GET", "/userdata?dir=workflows") == (200, ["big.json"])


def test_the_size_limit(live, monkeypatch):
    from loom.server import userdata
    monkeypatch.setattr(userdata, "MAX_FILE_BYTES", 1024)
    status, body = call(live, "POST", "/userdata/workflows%2Fhuge.json", b"x" * 2048)
    assert status == 413 and body["error"]["type"] == "too_large"
    assert not (live.root / "workflows" / "huge.json").exists()


HOSTILE = [
    ("..%2F..%2Fescape.json", 403),
    ("workflows%2F..%2F..%2F..%2Fescape.json", 403),
    ("%2E%2E%2Fescape.json", 403),
    ("%252e%252e%252fescape.json", 403),  # encoded twice: decoded once more, still refused
    ("%2Fetc%2Fpasswd", 403),
    ("%2Ftmp%2Fescape.json", 403),
    ("C%3A%5Cescape.json", 400),
    ("workflows%5C..%5C..%5Cescape.json", 400),
    ("workflows%2Fa%00b.json", 400),
    ("workflows%2Fa%0Ab.json", 400),
    ("workflows%2Fa%1Bb.json", 400),
    ("workflows%2F" + "a" * 300 + ".json", 400),
    ("%2F".join(["d" * 200] * 6) + ".json", 400),
    ("workflows%2Fcon.json", 400),
    ("workflows%2Fname.json.", 400),
    ("%2F", 403),
    ("%2F%2F", 403),
]


@pytest.mark.parametrize("name,status", HOSTILE)
def test_hostile_names_are_refused(live, name, status):
    outside = live.base / "escape.json"
    for method, path in (("POST", f"/userdata/{name}"), ("GET", f"/userdata/{name}"),
                         ("DELETE", f"/userdata/{name}"),
                         ("POST", f"/userdata/{name}/move/workflows%2Fok.json"),
                         ("POST", f"/userdata/workflows%2Fsrc.json/move/{name}")):
        if method == "POST" and path.endswith(f"/move/{name}"):
            call(live, "POST", "/userdata/workflows%2Fsrc.json", b"{}")
        got, body = call(live, method, path, b"{}" if method == "POST" else None)
        assert 400 <= got < 500, (method, path, got, body)
        if got != 404:
            assert got == status, (method, path, got, body)
            assert isinstance(body, dict) and body["error"]["message"], body
            assert str(live.base) not in json.dumps(body)
    assert not outside.exists()
    assert not Path("/tmp/escape.json").exists()
    assert call(live, "GET", "/api/health")[0] == 200


def test_symlinks_out_of_the_user_folder_are_refused(live, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    (live.root / "workflows").mkdir(parents=True)
    os.symlink(secret, live.root / "workflows" / "link.json")
    os.symlink(tmp_path, live.root / "linked-dir")
    os.symlink(tmp_path / "nowhere.json", live.root / "workflows" / "dangling.json")
    assert call(live, "GET", "/userdata/workflows%2Flink.json")[0] == 403
    assert call(live, "POST", "/userdata/workflows%2Flink.json", b"{}")[0] == 403
    assert call(live, "DELETE", "/userdata/workflows%2Flink.json")[0] == 403
    assert call(live, "POST", "/userdata/linked-dir%2Fnew.json", b"{}")[0] == 403
    assert call(live, "POST", "/userdata/workflows%2Fdangling.json", b"{}")[0] == 403
    assert call(live, "GET", "/userdata?dir=linked-dir")[0] == 403
    assert call(live, "GET", "/userdata?dir=workflows") == (200, [])
    call(live, "POST", "/userdata/workflows%2Fmine.json", b"{}")
    assert call(live, "POST", "/userdata/workflows%2Fmine.json/move/linked-dir%2Fmine.json")[0] == 403
    assert secret.read_text() == '{"secret": 1}' and not (tmp_path / "new.json").exists()
    assert not (tmp_path / "nowhere.json").exists() and not (tmp_path / "mine.json").exists()


def test_folders_and_files_in_the_way(live):
    call(live, "POST", "/userdata/workflows%2Fa.json", b"{}")
    assert call(live, "POST", "/userdata/workflows", b"{}")[0] == 409  # a folder has that name
    assert call(live, "POST", "/userdata/workflows%2Fa.json%2Fb.json", b"{}")[0] == 409  # a file is in the way
    assert call(live, "DELETE", "/userdata/workflows")[0] == 400
    assert call(live, "GET", "/userdata/workflows")[0] == 404
    assert (live.root / "workflows" / "a.json").read_bytes() == b"{}"


def test_the_token_rule_applies(servers):
    _, locked, base = servers
    for method, path in (("GET", "/userdata/workflows%2Fa.json"), ("POST", "/userdata/workflows%2Fa.json"),
                         ("DELETE", "/userdata/workflows%2Fa.json"),
                         ("POST", "/userdata/workflows%2Fa.json/move/workflows%2Fb.json"),
                         ("GET", "/api/userdata?dir=workflows"), ("GET", "/api/workflows/templates")):
        assert call(locked, method, path, b"{}" if method == "POST" else None)[0] == 401, (method, path)
    assert not (base / "locked-user" / "default" / "workflows" / "a.json").exists()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert call(locked, "POST", "/api/userdata/workflows%2Fa.json", b"{}", auth) == (200, "workflows/a.json")
    assert (base / "locked-user" / "default" / "workflows" / "a.json").exists()
    # a cross-site page cannot write either
    status, _ = call(locked, "POST", "/api/userdata/workflows%2Fa.json", b"{}",
                     {**auth, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert status == 403


def test_templates_list_the_example_workflows(live):
    from loom.nodes.kernel import folders
    status, templates = call(live, "GET", "/api/workflows/templates")
    assert status == 200
    names = [t["name"] for t in templates]
    assert sorted(names) == sorted(p.stem for p in folders.EXAMPLE_WORKFLOWS_DIR.glob("*.json"))
    assert names[0] == "txt2img"
    by_name = {t["name"]: t for t in templates}
    assert by_name["txt2img"]["models"] == ["loom-demo.safetensors"] and by_name["txt2img"]["builtin_model"]
    for template in templates:
        assert template["title"] and template["description"], template
        if template["builtin_model"]:  # a picture the workflow made with the demo model
            assert template["thumbnail"] == f"templates/{template['name']}.png"
            assert (folders.WEB_DIR / template["thumbnail"]).is_file()
            assert call(live, "GET", "/" + template["thumbnail"])[0] == 200
    assert by_name["sdxl-base-refiner"]["thumbnail"] is None
    status, workflow = call(live, "GET", "/api/workflows/templates/img2img")
    assert status == 200 and workflow == json.loads((folders.EXAMPLE_WORKFLOWS_DIR / "img2img.json").read_text())
    for bad in ("missing", "..%2Fpyproject", "%2E%2E", "README"):
        assert call(live, "GET", f"/api/workflows/templates/{bad}")[0] == 404, bad


def test_a_file_name_that_is_not_utf8_is_a_400():
    """%ff%fe decodes to no text: the route sweep of issue 13 found it answered 500."""
    from loom.server.security import ClientError
    from loom.server.userdata import relative_name

    with pytest.raises(ClientError) as refused:
        relative_name("%ff%fe")
    assert refused.value.status == 400 and "UTF-8" in refused.value.details

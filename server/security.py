"""Secure-by-default HTTP: the access token, cross-site request checks, safe file names, upload rules.

* **Token.** On a loopback address no token is needed unless one is given. On any other address a
  token is required (generated and printed at start when none is given). It is accepted as
  ``Authorization: Bearer <token>``, as a ``token`` query parameter (browser links, WebSocket URLs) or
  as the ``loom_token`` cookie, which the server sets when a page is opened with ``?token=``.
  ``/api/health`` alone answers without it.
* **Cross-site requests.** A request whose ``Origin`` does not match its ``Host`` is refused (403), and
  so is ``Origin: null`` (sandboxed iframes) and ``Sec-Fetch-Site: cross-site`` except for a top-level
  navigation. On a loopback address the ``Host`` must be a loopback name (DNS rebinding). Browsers
  posting form-style bodies (``text/plain``, url-encoded, multipart) to JSON routes get 415; scripts
  that send no ``Origin`` (curl, urllib) are accepted as ComfyUI accepts them.
* **File names** given by clients are single path components; sub-folders are relative and have no
  ``..``; every path is resolved with ``realpath`` and must stay inside input/output/temp
  (:func:`loom.nodes.kernel.folders.resolve_data`), symlinks included.
* **Errors** carry a message, never a traceback or a server path.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import re
import secrets
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from loom.nodes.kernel import folders
from loom.server import json_chunked

log = logging.getLogger("loom.server")

TOKEN_COOKIE = "loom_token"
TOKEN_QUERY = "token"
PUBLIC_PATHS = frozenset({"/api/health", "/health"})
"""Routes that answer without a token (liveness only: no data)."""

FORM_CONTENT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
MULTIPART_ROUTES = frozenset({"/upload/image", "/upload/mask", "/api/upload/image", "/api/upload/mask"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

RASTER_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".gif": "image/gif", ".bmp": "image/bmp",
}
MEDIA_TYPES = {
    ".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime",
    ".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
}
"""What ``/view`` serves inline; anything else is sent as an ``application/octet-stream`` attachment."""

VIEW_CSP = "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox"
WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                              *(f"lpt{i}" for i in range(1, 10))})
MAX_NAME_LENGTH = 200


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def generate_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class SecurityConfig:
    host: str = "127.0.0.1"
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    """Extra ``Host`` names accepted on a loopback bind (a reverse proxy's name)."""
    allowed_origins: tuple[str, ...] = ()
    """Extra origins (``scheme://host[:port]``) allowed to make cross-origin requests."""
    cookie_secure: bool = False

    def __post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise ValueError("the access token must not be empty")

    @property
    def auth_required(self) -> bool:
        return self.token is not None

    @property
    def loopback(self) -> bool:
        return all(is_loopback(h.strip()) for h in self.host.split(",") if h.strip())

    @classmethod
    def for_bind(cls, host: str, token: str | None = None, **kwargs: Any) -> "SecurityConfig":
        """The configuration for listening on ``host``: a token is generated when one is required."""
        config = cls(host=host, token=token, **kwargs)
        if token is None and not config.loopback:
            config.token = generate_token()
        return config


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------

def error_body(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    """ComfyUI's error object ``{type, message, details, extra_info}``."""
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def json_error(status: int, kind: str, message: str, details: str = "", **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": error_body(kind, message, details, **extra)}
    if status == 400:
        body["node_errors"] = {}
    return web.json_response(body, status=status)


class ClientError(Exception):
    """A request that cannot be served as given; becomes a JSON error response."""

    def __init__(self, status: int, kind: str, message: str, details: str = "", **extra: Any) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.details, self.extra = status, kind, message, details, extra

    def response(self) -> web.Response:
        return json_error(self.status, self.kind, self.message, self.details, **self.extra)


# -------------------------------------------------------------------------------------------------
# Middleware
# -------------------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_name(host_header: str) -> str:
    try:
        return (urlsplit("//" + host_header).hostname or "").lower()
    except ValueError:
        return ""


def _origin_matches_host(origin: str, host_header: str, scheme: str) -> bool:
    try:
        parts = urlsplit(origin)
        origin_host, origin_port = parts.hostname, parts.port
        host_parts = urlsplit("//" + host_header)
        host_host, host_port = host_parts.hostname, host_parts.port
    except ValueError:
        return False
    if not parts.scheme or not origin_host or not host_host:
        return False
    default = {"http": 80, "https": 443}
    origin_port = origin_port or default.get(parts.scheme)
    host_port = host_port or default.get(scheme)
    # the scheme too: https://127.0.0.1:PORT is another origin than this http server (behind a TLS proxy,
    # --allowed-origin names the public origin)
    return (parts.scheme.lower() == scheme.lower() and origin_host.lower() == host_host.lower()
            and origin_port == host_port)


def presented_token(request: web.Request) -> tuple[str | None, str]:
    """The token a request carries and where it came from (``header``, ``query``, ``cookie``)."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip(), "header"
    if TOKEN_QUERY in request.query:
        return request.query[TOKEN_QUERY], "query"
    if TOKEN_COOKIE in request.cookies:
        return request.cookies[TOKEN_COOKIE], "cookie"
    return None, ""


def token_valid(config: SecurityConfig, token: str | None) -> bool:
    if config.token is None:
        return True
    return token is not None and hmac.compare_digest(token.encode(), config.token.encode())


def check_request(config: SecurityConfig, request: web.Request) -> web.Response | None:
    """The refusal for a request that fails a check, or ``None`` when it may proceed."""
    host_header = request.headers.get("Host", "")
    if config.loopback:
        host = _host_name(host_header)
        if host not in LOOPBACK_NAMES and not is_loopback(host) and host not in config.allowed_hosts:
            return json_error(403, "forbidden_host", "Host not allowed",
                              "this server listens on a loopback address and only answers to local host names")

    origin = request.headers.get("Origin")
    if origin is not None and origin not in config.allowed_origins:
        if origin.strip().lower() == "null":
            return json_error(403, "cross_origin", "Cross-origin request refused", "Origin: null is not allowed")
        if not _origin_matches_host(origin, host_header, request.scheme):
            return json_error(403, "cross_origin", "Cross-origin request refused",
                              "the Origin header does not match the Host header")

    fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
    if fetch_site == "cross-site" and origin not in config.allowed_origins:
        navigation = request.method in ("GET", "HEAD") and request.headers.get("Sec-Fetch-Mode") == "navigate"
        if not navigation:
            return json_error(403, "cross_origin", "Cross-site request refused", "Sec-Fetch-Site is cross-site")

    if request.path not in PUBLIC_PATHS and config.auth_required:
        token, _ = presented_token(request)
        if not token_valid(config, token):
            return json_error(401, "unauthorized", "Authentication required",
                              "send the server's token as 'Authorization: Bearer <token>' "
                              "or open the editor with ?token=<token>")

    if request.method not in ("GET", "HEAD", "OPTIONS") and request.path not in MULTIPART_ROUTES:
        browser = origin is not None or "Sec-Fetch-Site" in request.headers
        if browser and request.content_type in FORM_CONTENT_TYPES:
            return json_error(415, "unsupported_media_type", "Unsupported content type",
                              f"send JSON (application/json), not {request.content_type}")
    return None


def security_middleware(config: SecurityConfig) -> Callable:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = check_request(config, request)
        if refusal is not None:
            return refusal
        response = await handler(request)
        token, source = presented_token(request)
        if config.auth_required and source == "query" and request.method == "GET" \
                and not response.prepared and token_valid(config, token):
            # a page opened with ?token= keeps working (fetches, WebSocket) through the cookie
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict",
                                secure=config.cookie_secure, path="/")
        return response
    return middleware


HARDENING_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                     "X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


async def add_hardening_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response the application sends gets these headers (errors, files and
    the WebSocket handshake included), unless its handler set a stricter one (``/view``'s CSP)."""
    for name, value in HARDENING_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error without a traceback or a server path (those go to the log)."""
    try:
        return await handler(request)
    except ClientError as error:
        return error.response()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, "too_large", "Request body too large")
    except folders.StorageError as error:  # the disk is full or read-only: nothing was written
        return json_error(507, "storage_error", "The server could not store the file", str(error))
    except HttpProcessingError as error:  # a body aiohttp cannot parse, e.g. a control byte in a multipart header
        return json_error(400, "bad_request", "Malformed request", str(error.message)[:200])
    except web.HTTPException as error:
        if error.status >= 400 and error.content_type != "application/json":
            return json_error(error.status, "http_error", error.reason)
        raise
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("error in %s %s", request.method, request.path)
        return json_error(500, "server_error", "Internal server error", "see the server log")


def scrub_paths(value: Any) -> Any:
    """``value`` (JSON-like) with the server's directories replaced by placeholders like ``<input>``."""
    current = folders.current()
    roots = {str(current.data_dir(kind)): f"<{kind}>" for kind in folders.DATA_DIRS}
    roots[str(current.models_dir)] = "<models>"
    roots[str(current.base_dir)] = "<base>"
    roots[str(folders.PACKAGE_ROOT)] = "<loom>"
    text = json.dumps(value)
    if not any(json.dumps(root)[1:-1] in text for root in roots):
        return value
    for root in sorted(roots, key=len, reverse=True):
        text = text.replace(json.dumps(root)[1:-1], roots[root])
    return json.loads(text)


# -------------------------------------------------------------------------------------------------
# Safe names and paths
# -------------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: str, what: str = "filename") -> str:
    """A client-given file name must be one plain path component; raises ClientError(400) otherwise."""
    if not isinstance(name, str) or not name:
        raise ClientError(400, "invalid_filename", f"Missing {what}")
    if _CONTROL.search(name) or "/" in name or "\\" in name or name in (".", "..") or ":" in name:
        raise ClientError(400, "invalid_filename", f"Invalid {what}",
                          f"the {what} must be a plain file name without path separators")
    if len(name) > 255:
        raise ClientError(400, "invalid_filename", f"Invalid {what}", f"the {what} is too long")
    return name


def check_subfolder(subfolder: str) -> str:
    """A relative, ``/``-separated sub-folder without ``..``; raises ClientError otherwise."""
    if not subfolder:
        return ""
    if _CONTROL.search(subfolder) or "\\" in subfolder or ":" in subfolder or subfolder.startswith("/"):
        raise ClientError(403, "forbidden_path", "Invalid subfolder", "the subfolder must be a relative path")
    parts = [p for p in subfolder.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or len(subfolder) > 1024:
        raise ClientError(403, "forbidden_path", "Invalid subfolder", "the subfolder must stay inside its folder")
    return "/".join(parts)


def split_annotation(name: str) -> tuple[str, str | None]:
    """``"x.png [input]"`` -> ``("x.png", "input")`` (ComfyUI's annotated names)."""
    for kind in folders.DATA_DIRS:
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def data_path(kind: str, filename: str, subfolder: str = "") -> Path:
    """The path of a client-named file in input/output/temp, or ClientError (400/403)."""
    if kind not in folders.DATA_DIRS:
        raise ClientError(400, "invalid_type", "Invalid type",
                          f"type must be one of {', '.join(folders.DATA_DIRS)}")
    name = check_name(filename)
    sub = check_subfolder(subfolder)
    try:
        return folders.resolve_data(kind, name, sub)
    except PermissionError:
        raise ClientError(403, "forbidden_path", "Path not allowed",
                          f"the file must stay inside the {kind} folder") from None


def sanitize_upload_name(name: str, extension: str) -> str:
    """A safe file name for an upload on every OS, ending in ``extension`` (e.g. ``.png``)."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name)
    name = re.sub(r'[<>:"|?*;]', "_", name).strip().strip(".")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    stem = stem.strip() or "upload"
    if stem.split(".")[0].lower() in WINDOWS_RESERVED:
        stem = "_" + stem
    stem = stem[:MAX_NAME_LENGTH]
    return stem + extension


def content_disposition(disposition: str, filename: str) -> str:
    """``inline``/``attachment`` with the name RFC 6266-encoded: no header splitting or quote breaking."""
    from urllib.parse import quote
    ascii_name = re.sub(r'[^A-Za-z0-9._ ()\[\]-]', "_", filename)[:MAX_NAME_LENGTH] or "file"
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def view_content_type(path: Path) -> tuple[str, bool]:
    """``(content type, inline)`` for a file served by ``/view``: only known media inline."""
    suffix = path.suffix.lower()
    if suffix in RASTER_TYPES:
        return RASTER_TYPES[suffix], True
    if suffix in MEDIA_TYPES:
        return MEDIA_TYPES[suffix], True
    return "application/octet-stream", False


# -------------------------------------------------------------------------------------------------
# JSON bodies
# -------------------------------------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def non_finite_path(value: Any) -> list[str] | None:
    """Where ``value`` (parsed JSON) holds a number that is not finite (``1e999`` parses as infinity), as
    the keys and indexes leading to it; None when every number is finite. Iterative: any depth is fine."""
    stack: list[tuple[Any, list[str]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path
        if isinstance(item, dict):
            stack.extend((child, path + [str(key)]) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, path + [str(index)]) for index, child in enumerate(item))
    return None


def non_finite_error(path: list[str]) -> ClientError:
    where = "/".join(path) or "the body"
    return ClientError(400, "invalid_json", "Invalid JSON",
                       f"{where}: the number is too large to be finite (JSON has no Infinity or NaN)")


OFF_LOOP_JSON_BYTES = 256 * 1024
"""A body bigger than this is parsed in a thread, in small steps (server.json_chunked), so the event loop
keeps serving other requests meanwhile."""


async def read_json(request: web.Request, limit: int, *, required: bool = True, finite: bool = True) -> Any:
    """The request body parsed as JSON, read in bounded chunks; ClientError on anything else.

    ``NaN``/``Infinity`` are refused, and so (unless ``finite`` is False, for a caller that reports them
    itself) are numbers like ``1e999`` that parse as infinite; a byte-order mark is refused, and nesting deep
    enough to hit Python's recursion limit is reported as invalid JSON instead of a traceback.
    """
    if request.content_length is not None and request.content_length > limit:
        raise ClientError(413, "too_large", "Request body too large",
                          f"the body is {request.content_length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise ClientError(413, "too_large", "Request body too large", f"the limit is {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise ClientError(400, "invalid_json", "Empty request body", "send a JSON object")
        return None
    if len(raw) > OFF_LOOP_JSON_BYTES:
        return await asyncio.to_thread(_parse_json, raw, finite, json_chunked.loads)
    return _parse_json(raw, finite, json.loads)


def _parse_json(raw: bytes, finite: bool, loads: Callable[..., Any]) -> Any:
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("a byte-order mark is not allowed")
        value = loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ClientError(400, "invalid_json", "Invalid JSON", "the body is not UTF-8") from None
    except RecursionError:
        raise ClientError(400, "invalid_json", "Invalid JSON", "the JSON is nested too deeply") from None
    except ValueError as error:
        raise ClientError(400, "invalid_json", "Invalid JSON", str(error)[:200]) from None
    if finite and (path := non_finite_path(value)) is not None:
        raise non_finite_error(path)
    return value


@dataclass
class UploadLimits:
    max_bytes: int = 100 * 1024 * 1024
    max_pixels: int = 8192 * 8192


"""A local server speaking the Hub HTTP API, so push/pull runs end to end without a network.

``LocalHubServer`` is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 implementing the routes the real
``huggingface_hub`` client uses for ``create_repo``, ``upload_folder``/``push_to_hub``, ``hf_hub_download``,
``from_pretrained("<user>/<repo>")``, ``whoami`` and ``ModelCard.validate``. Repositories are stored as
plain folders under ``root``. Switches inject a server error in the middle of an upload and reject tokens.

``huggingface_hub`` reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` / ``HF_HOME`` into module constants at
import time. Two ways to point a client at the server:

* a subprocess started with ``server.client_env()`` merged into its environment (fresh imports read it);
* in the current process, ``with use_local_hub(server, cache_dir):`` which patches those constants and
  restores them afterwards.

It is a test double for the Hub's HTTP protocol (no LFS/Xet, no pull requests, one ``main`` branch).

Length: one HTTP handler implementing every Hub route the real client calls; splitting the routes would
scatter one protocol over several files (about 500 lines).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

REPO = r"(?P<repo>[\w.\-]+/[\w.\-]+)"
REV = r"(?P<rev>[^/]+)"
ROUTES = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(rf"^/api/models/{REPO}(?:/revision/{REV})?$"), "model_info"),
    ("GET", re.compile(rf"^/api/models/{REPO}/tree/{REV}(?:/(?P<path>.*))?$"), "tree"),
    ("POST", re.compile(rf"^/api/models/{REPO}/paths-info/{REV}$"), "paths_info"),
    ("POST", re.compile(rf"^/api/models/{REPO}/preupload/{REV}$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{REPO}/commit/{REV}$"), "commit"),
    ("GET", re.compile(rf"^/{REPO}/resolve/{REV}/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/{REPO}/resolve/{REV}/(?P<path>.+)$"), "resolve"),
]
MAX_BODY_BYTES = 512 * 1024 * 1024


class _HubError(Exception):
    def __init__(
        self, status: int, message: str, error_code: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code
        self.extra = extra or {}


@dataclass
class _Repo:
    repo_id: str
    private: bool
    commits: list[str] = field(default_factory=list)


def _validate_card_metadata(content: str) -> list[str]:
    """Check a card's YAML header the way the Hub does for the fields it renders; return the errors."""
    import yaml

    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, flags=re.DOTALL)
    if match is None:
        return []
    try:
        metadata = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as error:
        return [f"invalid YAML: {error}"]
    if not isinstance(metadata, dict):
        return ["metadata must be a mapping"]
    errors = []
    for key in ("license", "pipeline_tag", "library_name"):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(f'"{key}" must be a string')
    for key in ("tags", "datasets"):
        if key in metadata and not (
            isinstance(metadata[key], list) and all(isinstance(v, str) for v in metadata[key])
        ):
            errors.append(f'"{key}" must be a list of strings')
    for index, model in enumerate(metadata.get("model-index") or []):
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append(f'"model-index[{index}].name" is required')
            continue
        for r_index, result in enumerate(model.get("results") or []):
            where = f"model-index[{index}].results[{r_index}]"
            if not isinstance((result.get("task") or {}).get("type"), str):
                errors.append(f'"{where}.task.type" is required')
            dataset = result.get("dataset") or {}
            if not isinstance(dataset.get("name"), str) or not isinstance(dataset.get("type"), str):
                errors.append(f'"{where}.dataset.name" and ".type" are required')
            for m_index, metric in enumerate(result.get("metrics") or []):
                if not isinstance(metric.get("type"), str):
                    errors.append(f'"{where}.metrics[{m_index}].type" is required')
                if not isinstance(metric.get("value"), int | float | str):
                    errors.append(f'"{where}.metrics[{m_index}].value" must be a number or string')
    return errors


class LocalHubServer:
    """A Hub HTTP API test server on 127.0.0.1, storing repositories under ``root``.

    Args:
        root: folder for repository files (created).
        user: the account name ``whoami`` reports and that owns new repositories.
        token: the only accepted token; requests with another ``Authorization`` token get 401.
        port: 0 picks a free port.
        max_lifetime_s: the server shuts itself down after this many seconds, whatever the caller does.

    Attributes:
        fail_commits: number of upcoming commit requests to answer with HTTP 500 (an error mid-upload:
            after ``preupload`` succeeded, before anything is stored).
        reject_all_tokens: answer 401 to every authenticated request (a revoked token).
        requests: ``(method, path)`` of every request served, for assertions.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        user: str = "tester",
        token: str = "hf_local_test_token",
        port: int = 0,
        max_lifetime_s: float = 900.0,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.user, self.token = user, token
        self.fail_commits = 0
        self.reject_all_tokens = False
        self.requests: list[tuple[str, str]] = []
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1})
        self._thread.daemon = True
        self._timer = threading.Timer(max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHubServer:
        """Serve in a background thread; returns ``self``."""
        self._thread.start()
        self._timer.start()
        logger.info("local Hub test server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client_env(self, hf_home: str | os.PathLike) -> dict[str, str]:
        """Environment variables pointing a fresh ``huggingface_hub`` process at this server."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_TOKEN": self.token,
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
        }

    def repo_files(self, repo_id: str) -> list[str]:
        """Paths of the files stored in ``repo_id`` (empty if the repository does not exist)."""
        folder = self.root / repo_id
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    # ----- request handling -------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib signature)
                logger.debug("hub server: " + format, *args)

            def _dispatch(self, method: str) -> None:
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                server.requests.append((method, path))
                try:
                    for route_method, pattern, name in ROUTES:
                        match = pattern.match(path)
                        if route_method == method and match:
                            server._check_token(self.headers.get("Authorization"))
                            body = self._read_body()
                            getattr(server, f"_route_{name}")(
                                self, method, match.groupdict(), body, parse_qs(parts.query)
                            )
                            return
                    raise _HubError(404, f"no route for {method} {path}")
                except _HubError as error:
                    payload = json.dumps({"error": error.message, **error.extra}).encode()
                    headers = {"X-Error-Code": error.error_code} if error.error_code else {}
                    headers["X-Error-Message"] = error.message
                    self._send(error.status, payload, "application/json", headers, head=method == "HEAD")

            def _read_body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise _HubError(413, f"request body of {length} bytes is too large")
                return self.rfile.read(length) if length else b""

            def _send(
                self,
                status: int,
                payload: bytes,
                content_type: str,
                headers: dict[str, str] | None = None,
                head: bool = False,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(payload)

            def send_json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(data).encode(), "application/json", headers)

            def do_GET(self) -> None:  # noqa: N802  (stdlib naming)
                self._dispatch("GET")

            def do_HEAD(self) -> None:  # noqa: N802
                self._dispatch("HEAD")

            def do_POST(self) -> None:  # noqa: N802
                self._dispatch("POST")

        return Handler

    def _check_token(self, authorization: str | None) -> None:
        if authorization is None:
            return
        token = authorization.removeprefix("Bearer ").strip()
        if self.reject_all_tokens or token != self.token:
            # The real Hub's wording; the token itself is never echoed back.
            raise _HubError(401, "Invalid credentials in Authorization header", "InvalidCredentials")

    def _repo(self, repo_id: str, authenticated: bool) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and not authenticated):
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _file_entry(self, repo_id: str, path: str) -> dict[str, Any]:
        file = self.root / repo_id / path
        data = file.read_bytes()
        return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

    def _route_whoami(self, handler, method, groups, body, query) -> None:
        if handler.headers.get("Authorization") is None:
            raise _HubError(401, "Invalid credentials in Authorization header", "InvalidCredentials")
        handler.send_json(
            {
                "type": "user",
                "name": self.user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            }
        )

    def _route_create_repo(self, handler, method, groups, body, query) -> None:
        if handler.headers.get("Authorization") is None:
            raise _HubError(401, "You must be authenticated to create a repository", "Unauthorized")
        payload = json.loads(body or b"{}")
        namespace = payload.get("organization") or self.user
        if namespace != self.user:
            raise _HubError(
                403, f"You don't have the rights to create a model under the namespace {namespace}"
            )
        repo_id = f"{namespace}/{payload['name']}"
        with self._lock:
            if repo_id in self._repos:
                # Like the Hub, the conflict answer still carries the repository URL (create_repo reads it).
                raise _HubError(
                    409, "You already created this model repo", "RepoExists", {"url": f"{self.url}/{repo_id}"}
                )
            private = payload.get("private") or payload.get("visibility") == "private"
            self._repos[repo_id] = _Repo(repo_id=repo_id, private=bool(private))
            (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        handler.send_json({"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _route_validate_yaml(self, handler, method, groups, body, query) -> None:
        payload = json.loads(body or b"{}")
        errors = _validate_card_metadata(payload.get("content", ""))
        if errors:
            handler._send(400, "\n".join(errors).encode(), "text/plain")
        else:
            handler.send_json({"errors": [], "warnings": []})

    def _route_model_info(self, handler, method, groups, body, query) -> None:
        repo = self._repo(groups["repo"], handler.headers.get("Authorization") is not None)
        sha = repo.commits[-1] if repo.commits else "0" * 40
        files = self.repo_files(repo.repo_id)
        handler.send_json(
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": path} for path in files],
                "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            }
        )

    def _route_tree(self, handler, method, groups, body, query) -> None:
        repo = self._repo(groups["repo"], handler.headers.get("Authorization") is not None)
        prefix = (groups.get("path") or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for path in self.repo_files(repo.repo_id):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            if "/" in rest and not recursive:
                folders.add((f"{prefix}/" if prefix else "") + rest.split("/")[0])
                continue
            entries.append(self._file_entry(repo.repo_id, path))
        entries += [
            {"type": "directory", "path": folder, "size": 0, "oid": "0" * 40} for folder in sorted(folders)
        ]
        handler.send_json(entries)

    def _route_paths_info(self, handler, method, groups, body, query) -> None:
        repo = self._repo(groups["repo"], handler.headers.get("Authorization") is not None)
        content_type = handler.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        existing = set(self.repo_files(repo.repo_id))
        handler.send_json([self._file_entry(repo.repo_id, p) for p in paths if p in existing])

    def _route_preupload(self, handler, method, groups, body, query) -> None:
        repo = self._repo(groups["repo"], True)
        files = json.loads(body or b"{}").get("files", [])
        handler.send_json(
            {
                "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files],
                "commitOid": repo.commits[-1] if repo.commits else None,
            }
        )

    def _route_commit(self, handler, method, groups, body, query) -> None:
        repo = self._repo(groups["repo"], True)
        with self._lock:
            if self.fail_commits > 0:
                self.fail_commits -= 1
                raise _HubError(500, "Internal Error - We're working hard to fix this as soon as possible!")
        additions: dict[str, bytes] = {}
        deletions: list[str] = []
        summary = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"].get("summary", "")
            elif item["key"] == "file":
                value = item["value"]
                if value.get("encoding") != "base64":
                    raise _HubError(400, f"unsupported encoding for {value.get('path')}")
                additions[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deletions.append(item["value"]["path"])
            else:
                raise _HubError(400, f"unsupported commit operation {item['key']!r} (no LFS on this server)")
        folder = (self.root / repo.repo_id).resolve()
        with self._lock:
            for path, data in additions.items():
                target = (folder / path).resolve()
                if folder not in target.parents:
                    raise _HubError(400, f"path {path!r} escapes the repository")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            for path in deletions:
                target = (folder / path).resolve()
                if folder in target.parents:
                    if target.is_dir():
                        shutil.rmtree(target)
                    else:
                        target.unlink(missing_ok=True)
            digest = hashlib.sha1(f"{len(repo.commits)}:{summary}".encode())
            for path in sorted(additions):
                digest.update(path.encode() + additions[path])
            sha = digest.hexdigest()
            repo.commits.append(sha)
        handler.send_json(
            {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{sha}", "commitOid": sha, "success": True}
        )

    def _route_resolve(self, handler, method, groups, body, query) -> None:
        repo = self._repo(groups["repo"], handler.headers.get("Authorization") is not None)
        path = groups["path"]
        file = (self.root / repo.repo_id / path).resolve()
        if not file.is_file() or (self.root / repo.repo_id).resolve() not in file.parents:
            raise _HubError(404, f"Entry {path} not found in {repo.repo_id}", "EntryNotFound")
        data = file.read_bytes()
        sha = repo.commits[-1] if repo.commits else "0" * 40
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
            "Accept-Ranges": "none",
        }
        handler._send(200, data, "application/octet-stream", headers, head=method == "HEAD")


@contextlib.contextmanager
def use_local_hub(server: LocalHubServer, cache_dir: str | os.PathLike) -> Iterator[None]:
    """Point ``huggingface_hub`` (and transformers through it) at ``server`` inside the current process.

    Patches the constants ``huggingface_hub`` computed from ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` /
    ``HF_HUB_CACHE`` at import time, and sets the environment variables for code that reads them later;
    everything is restored on exit.

    Args:
        server: a started :class:`LocalHubServer`.
        cache_dir: download cache for this session (``HF_HOME``).
    """
    from huggingface_hub import constants

    hub_cache = os.path.join(cache_dir, "hub")
    patched = {
        "ENDPOINT": server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(cache_dir),
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_TOKEN_PATH": os.path.join(cache_dir, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(cache_dir, "stored_tokens"),
    }
    saved_constants = {name: getattr(constants, name) for name in patched if hasattr(constants, name)}
    environment = server.client_env(cache_dir)
    saved_environment = {name: os.environ.get(name) for name in environment}
    try:
        for name, value in patched.items():
            if name in saved_constants:
                setattr(constants, name, value)
        os.environ.update(environment)
        yield
    finally:
        for name, value in saved_constants.items():
            setattr(constants, name, value)
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


__all__ = ["LocalHubServer", "use_local_hub"]

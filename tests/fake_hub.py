"""A stand-in for the Hugging Face hub's HTTP API, serving a directory as a model repository.

The hub cannot be reached from the test machines; this serves just what
``huggingface_hub`` asks of it to list and download a repository, so the real
client code (its cache, its progress bars) runs against real HTTP. It can
also answer as the hub does for a gated repository or a missing one.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves ``repos`` ({repo id: directory}); ``gated`` repos answer 401/403 like the hub."""

    def __init__(
        self, repos: dict[str, Path], gated: frozenset[str] = frozenset(), hold: threading.Event | None = None
    ) -> None:
        self.repos = repos
        self.gated = gated
        # When given, large files stop half-way until it is set: a download in progress, for as long as a test needs.
        self.hold = hold
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, value: object) -> None:
                self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

            def _repo(self, parts: list[str]) -> tuple[str, Path] | None:
                repo = "/".join(parts[:2])
                if repo in hub.gated:
                    message = f"Access to model {repo} is restricted. You must have access to it."
                    self._send(403, message.encode(), {"X-Error-Code": "GatedRepo", "X-Error-Message": message})
                    return None
                if repo not in hub.repos:
                    self._send(401, b"Repository not found", {"X-Error-Code": "RepoNotFound"})
                    return None
                return repo, hub.repos[repo]

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
                if parts[:2] == ["api", "models"]:
                    found = self._repo(parts[2:4])
                    if found is None:
                        return
                    repo, root = found
                    files = sorted(p for p in root.rglob("*") if p.is_file())
                    names = [str(p.relative_to(root)) for p in files]
                    if len(parts) > 4 and parts[4] == "tree":
                        self._json([{"type": "file", "path": n, "size": p.stat().st_size, "oid": _sha1(p)}
                                    for n, p in zip(names, files, strict=True)])  # fmt: skip
                    else:
                        self._json({"id": repo, "sha": COMMIT, "siblings": [{"rfilename": n} for n in names]})
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    found = self._repo(parts[:2])
                    if found is None:
                        return
                    path = found[1] / "/".join(parts[4:])
                    if not path.is_file():
                        self._send(404, b"Entry not found", {"X-Error-Code": "EntryNotFound"})
                        return
                    body = path.read_bytes()
                    etag = f'"{hashlib.sha256(body).hexdigest()}"'
                    if hub.hold is None or len(body) < 1_000_000 or self.command == "HEAD":
                        self._send(200, body, {"X-Repo-Commit": COMMIT, "ETag": etag})
                        return
                    self.send_response(200)
                    for key, value in {"X-Repo-Commit": COMMIT, "ETag": etag, "Content-Length": str(len(body))}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    half = len(body) // 2
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    hub.hold.wait(60)
                    self.wfile.write(body[half:])
                    return
                self._send(404)

        return Handler


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()

"""A local stand-in for the Hugging Face Hub, reached through HF_ENDPOINT by the real huggingface_hub.

It answers the requests huggingface_hub makes to pull a file, in the Hub's URL layout and headers:
  GET  /api/models/{repo}[/revision/{rev}]?blobs=True   the repo's files, sizes, LFS sha256, commit sha
  HEAD /{repo}/resolve/{rev}/{file}                      X-Repo-Commit, ETag/X-Linked-Etag, X-Linked-Size
  GET  /{repo}/resolve/{rev}/{file}                      the bytes, honouring `Range: bytes=N-` (206)
with the Hub's error headers (X-Error-Code RepoNotFound, EntryNotFound, GatedRepo). Faults on purpose:
drop the connection after N bytes (then answer 503 until `heal()`), serve a damaged byte, declare a size
that no disk has. Every request is logged with the bytes it sent.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    data: bytes | None = None
    path: Path | None = None
    declared_size: int | None = None  # advertised instead of the real size (a file no disk can hold)
    damaged: bool = False  # one byte flipped in what is served; the listed sha256 stays the true one
    _sha256: str | None = None

    @property
    def size(self) -> int:
        if self.declared_size is not None:
            return self.declared_size
        return len(self.data) if self.data is not None else self.path.stat().st_size

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            if self.data is not None:
                digest.update(self.data)
            else:
                with open(self.path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def chunks(self, start: int, chunk: int = 1 << 16):
        real = len(self.data) if self.data is not None else self.path.stat().st_size
        middle = real // 2
        fh = open(self.path, "rb") if self.path is not None else None
        try:
            pos = start
            while pos < real:
                n = min(chunk, real - pos)
                if fh is not None:
                    fh.seek(pos)
                    piece = fh.read(n)
                else:
                    piece = self.data[pos : pos + n]
                if self.damaged and pos <= middle < pos + n:
                    b = bytearray(piece)
                    b[middle - pos] ^= 0xFF
                    piece = bytes(b)
                yield piece
                pos += n
        finally:
            if fh is not None:
                fh.close()


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    gated: bool = False
    commit: str = COMMIT


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0  # body bytes written
    authorization: str | None = None


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    token: str = "hf_fake_token"
    drop_after: dict[str, int] = field(default_factory=dict)  # file name → drop the connection after N bytes
    down: bool = False  # after a drop: 503 for every file request until heal()
    requests: list[Request] = field(default_factory=list)
    dropped: threading.Event = field(default_factory=threading.Event)

    def add(self, repo: str, files: dict[str, bytes | Path | HubFile], gated: bool = False) -> None:
        made = {}
        for name, value in files.items():
            if isinstance(value, HubFile):
                made[name] = value
            elif isinstance(value, Path):
                made[name] = HubFile(path=value)
            else:
                made[name] = HubFile(data=value)
        self.repos[repo] = HubRepo(made, gated=gated)

    def heal(self) -> None:
        self.down = False
        self.drop_after.clear()

    def sent(self, name: str, method: str = "GET") -> int:
        """Body bytes sent for files named `name` (the last path component)."""
        return sum(r.sent for r in self.requests if r.method == method and r.path.endswith("/" + name))

    def file_requests(self) -> list[Request]:
        return [r for r in self.requests if "/resolve/" in r.path]

    def start(self) -> RunningHub:
        return RunningHub(self)


class RunningHub:
    def __init__(self, hub: FakeHub):
        self.hub = hub
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> RunningHub:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _record(self, status: int, sent: int = 0) -> Request:
        req = Request(
            self.command,
            urlsplit(self.path).path,
            self.headers.get("Range"),
            status,
            sent,
            self.headers.get("Authorization"),
        )
        self.hub.requests.append(req)
        return req

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status)

    def _serve(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            return self._api(parts[2:])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
        self._error(404, None, "Not Found")

    def _api(self, rest: list[str]) -> None:
        repo_id = "/".join(rest[:2])
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if len(rest) > 2 and not (rest[2] == "revision" and rest[3] in ("main", repo.commit)):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        siblings = [
            {
                "rfilename": name,
                "size": f.size,
                "blobId": f.sha256[:40],
                "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134},
            }
            for name, f in sorted(repo.files.items())
        ]
        siblings.append({"rfilename": "README.md", "size": 12, "blobId": "f" * 40})
        body = json.dumps(
            {
                "_id": "x",
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "siblings": siblings,
                "tags": ["gguf"],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._record(200, len(body))

    def _file(self, repo_id: str, revision: str, name: str, head: bool) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if repo.gated and self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            return self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.",
            )
        hub_file = repo.files.get(name)
        if hub_file is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
        if self.hub.down and not head:
            return self._error(503, None, "Service Unavailable")
        size = hub_file.size
        start = 0
        wanted = self.headers.get("Range")
        if wanted and not head and wanted.startswith("bytes="):
            start = int(wanted[len("bytes=") :].split("-")[0] or 0)
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hub_file.sha256}"')
        self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if head:
            return self._record(status)
        record = self._record(status)
        limit = self.hub.drop_after.get(name.rsplit("/", 1)[-1])
        try:
            for piece in hub_file.chunks(start):
                if limit is not None and record.sent + len(piece) > limit:
                    piece = piece[: limit - record.sent]
                    self.wfile.write(piece)
                    record.sent += len(piece)
                    self.wfile.flush()
                    self.hub.down = True
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.hub.dropped.set()
                    return
                self.wfile.write(piece)
                record.sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def write_gguf(path: Path, name: str = "tiny", padding: int = 0) -> Path:
    """A small valid GGUF (llama.cpp's own writer) with `padding` bytes of one F32 tensor."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(128)
    count = max(padding // 4, 1)
    writer.add_tensor("pad.weight", np.arange(count, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

"""A tiny offline stand-in for the Hugging Face Hub HTTP API.

It implements just what ``huggingface_hub`` 2.x uses for ``create_repo``, uploads over plain HTTP + LFS
(``HF_HUB_DISABLE_XET=1``) and downloads, so tests can run a real ``push_to_hub`` -> ``from_pretrained``
round trip without network. Every commit is kept, so pinned ``revision=<sha>`` downloads keep working.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

USER = "user"
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores text files above 10 MB in LFS too
# The Hub seeds each repo with this .gitattributes; its ``filter=lfs`` patterns decide the upload mode.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz *.onnx "
    "*.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar *.tflite *.tgz "
    "*.wasm *.xz *.zip *.zst *tfevents*"
).split()
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
ACTIONS = "revision|tree|preupload|commit|commits|branch"
API_RE = re.compile(rf"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/({ACTIONS})(?:/([^/]+)(/.*)?)?)?$")
RESOLVE_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
LFS_BATCH_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch$")


def git_blob_sha(data: bytes) -> str:
    """Git's blob id, which the client compares against to skip re-uploading unchanged regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Git stores an LFS file as this pointer; its size and blob id show up in the API answers."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Entry:
    sha256: str
    size: int
    lfs: bool
    oid: str  # git blob id: of the content for regular files, of the pointer for LFS ones

    def as_json(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "path": path, "oid": self.oid, "size": self.size}
        if self.lfs:
            pointer_size = len(lfs_pointer(self.sha256, self.size))
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": pointer_size}
        return out


@dataclass
class Commit:
    sha: str
    title: str
    message: str
    date: str
    parent: str | None
    files: dict[str, Entry]


@dataclass
class Repo:
    rtype: str
    rid: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def at(self, rev: str) -> Commit:
        """Branch name, full commit sha, or an unambiguous sha prefix of 7+ characters."""
        sha = self.branches.get(rev, rev)
        found = [c for s, c in self.commits.items() if s == sha or (len(rev) >= 7 and s.startswith(rev))]
        if len(found) != 1:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return found[0]


class HubError(Exception):
    """Becomes an error reply carrying the ``X-Error-Code`` the client maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def tree_entries(commit: Commit, base: str, recursive: bool) -> list[dict[str, Any]]:
    """Files and folders under ``base``, as the ``/tree`` endpoint lists them."""
    prefix = f"{base.strip('/')}/" if base.strip("/") else ""
    out: dict[str, dict[str, Any]] = {}
    for path, entry in sorted(commit.files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for i in range(1, len(parts)):
            folder = prefix + "/".join(parts[:i])
            if recursive or i == 1:  # the Hub gives folders a tree oid; any stable hash will do here
                out[folder] = {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()}
        if recursive or len(parts) == 1:
            out[path] = entry.as_json(path)
    if prefix and not out:
        raise HubError(404, f"{base} does not exist on {commit.sha}", "EntryNotFound")
    return list(out.values())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: HubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, payload: Any = None, headers: dict[str, str] | None = None, raw: bytes = b"") -> None:
        data = json.dumps(payload).encode() if payload is not None else raw
        ctype = "application/json" if payload is not None else "application/octet-stream"
        self.send_response(status)
        for key, value in {"Content-Type": ctype, "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":  # a body after HEAD would be parsed as the next response
            self.wfile.write(data)

    def dispatch(self) -> None:
        self.server.hub_log.append((self.command, self.path))
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # always drain the body (the client always sends Content-Length), or the keep-alive socket desyncs
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            with self.server.lock:
                handled = self.route(url.path)
            if not handled:
                self.server.unknown.append((self.command, self.path))
                self.reply(404, {"error": f"not implemented: {self.command} {url.path}"})
        except HubError as err:
            self.fail(err)
        except Exception as exc:  # a server bug must reach the test as an error reply, not a dead socket
            self.server.unknown.append((self.command, f"{self.path} -> {exc!r}"))
            self.fail(HubError(500, repr(exc)))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = dispatch

    def fail(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode(), **err.extra.pop("headers", {})}
        if err.code:
            headers["X-Error-Code"] = err.code
        self.reply(err.status, {"error": err.message, **err.extra}, headers)

    def url_for(self, rtype: str, rid: str) -> str:
        return f"http://{self.headers['Host']}/{'' if rtype == 'model' else rtype + 's/'}{rid}"

    def repo(self, rtype: str | None, rid: str) -> Repo:
        repo = self.server.repos.get((TYPES.get(rtype or "", "model"), rid))
        if repo is None:
            raise HubError(404, f"Repository {rid} not found", "RepoNotFound")
        return repo

    def route(self, path: str) -> bool:
        hub, cmd = self.server, self.command
        if path == "/api/whoami-v2" and cmd == "GET":
            auth = {"type": "access_token", "accessToken": {"role": "write"}}
            self.reply(200, {"type": "user", "name": USER, "fullname": USER, "orgs": [], "auth": auth})
        elif path == "/api/validate-yaml" and cmd == "POST":
            self.reply(200, {"errors": [], "warnings": []})
        elif path == "/api/repos/create" and cmd == "POST":
            args = json.loads(self.body)
            key = (args.get("type") or "model", f"{args.get('organization') or USER}/{args['name']}")
            if key in hub.repos:  # the client's exist_ok=True relies on 409 + url
                raise HubError(409, "You already created this repo", url=self.url_for(*key))
            else:  # like the Hub, a new repo starts with one commit holding .gitattributes
                repo = hub.repos[key] = Repo(*key)
                attrs = hub.add_regular(DEFAULT_GITATTRIBUTES.encode())
                hub.new_commit(repo, "main", "initial commit", "", {".gitattributes": attrs})
                self.reply(200, {"url": self.url_for(*key), "name": key[1], "id": key[1]})
        elif (m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)) and cmd == "PUT":
            if hub.store(self.body) != m[1]:
                raise HubError(400, "LFS object does not match its oid")
            self.reply(200, {})
        elif m := LFS_BATCH_RE.match(path):
            self.lfs_batch(self.repo(m[1], m[2]), json.loads(self.body))
        elif (m := RESOLVE_RE.match(path)) and cmd in ("GET", "HEAD"):
            self.resolve_file(self.repo(m[1], m[2]).at(unquote(m[3])), unquote(m[4]))
        elif m := API_RE.match(path):
            # revision and path were quoted with safe="" by the client, so unquote only after splitting
            return self.api(self.repo(m[1], m[2]), m[3], unquote(m[4] or ""), unquote(m[5] or "").lstrip("/"))
        else:
            return False
        return True

    def api(self, repo: Repo, action: str | None, rev: str, rest: str) -> bool:
        cmd = self.command
        if action in (None, "revision") and cmd == "GET":
            self.reply(200, self.repo_info(repo, repo.at(rev or "main")))
        elif action == "tree" and cmd == "GET" and rev:
            recursive = self.query.get("recursive", "").lower() in ("1", "true")
            self.reply(200, tree_entries(repo.at(rev), rest, recursive))
        elif action == "preupload" and cmd == "POST" and rev:
            self.preupload(repo.at(rev), json.loads(self.body))
        elif action == "commit" and cmd == "POST" and rev:
            self.commit(repo, rev)
        elif action == "commits" and cmd == "GET" and rev:
            commit: Commit | None = repo.at(rev)
            out = []
            while commit is not None:
                item = {"id": commit.sha, "title": commit.title, "message": commit.message, "date": commit.date}
                out.append({**item, "authors": [{"user": USER}]})
                commit = repo.commits.get(commit.parent or "")
            self.reply(200, out)
        elif action == "branch" and rev and cmd in ("POST", "DELETE"):
            if cmd == "DELETE":
                repo.branches.pop(rev, None)
            elif rev in repo.branches:
                raise HubError(409, f"Branch {rev} already exists")
            else:
                repo.branches[rev] = repo.at(json.loads(self.body or b"{}").get("startingPoint") or "main").sha
            self.reply(200, {})
        else:
            return False
        return True

    def repo_info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        blobs = self.query.get("blobs", "").lower() in ("1", "true")  # files_metadata=True
        siblings = []
        for path, entry in commit.files.items():
            pointer_size = len(lfs_pointer(entry.sha256, entry.size))
            lfs = {"sha256": entry.sha256, "size": entry.size, "pointerSize": pointer_size}
            meta = {"size": entry.size, "blobId": entry.oid, **({"lfs": lfs} if entry.lfs else {})}
            siblings.append({"rfilename": path, **(meta if blobs else {})})
        ids = {"id": repo.rid, "_id": repo.rid, "modelId": repo.rid, "author": repo.rid.split("/")[0]}
        flags = {"private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": []}
        dates = {"lastModified": commit.date, "createdAt": min(c.date for c in repo.commits.values())}
        return {**ids, **flags, **dates, "sha": commit.sha, "siblings": siblings}

    def preupload(self, commit: Commit, payload: dict[str, Any]) -> None:
        """Decide regular vs LFS per file; the returned oid lets the client skip unchanged files."""
        files = []
        for f in payload["files"]:
            old = commit.files.get(f["path"])
            mode = "lfs" if self.server.is_lfs(commit, f, base64.b64decode(f.get("sample", ""))) else "regular"
            oid = (old.sha256 if old.lfs else old.oid) if old else None
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self.reply(200, {"files": files, "commitOid": commit.sha})

    def lfs_batch(self, repo: Repo, payload: dict[str, Any]) -> None:
        """Git LFS batch API: known objects need no upload, the others get a PUT href on this server."""
        objects = []
        for obj in payload.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.server.blob(obj["oid"]).exists():
                href = f"http://{self.headers['Host']}/lfs-upload/{obj['oid']}"
                item["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(item)
        self.reply(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def commit(self, repo: Repo, branch: str) -> None:
        """Apply the NDJSON operations on top of the branch head, as one new commit."""
        hub = self.server
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by the local hub")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        files, header = dict(head.files), {}
        for line in filter(str.strip, self.body.decode().splitlines()):
            op = json.loads(line)
            key, value = op["key"], op["value"]
            if key == "header":
                header = value
                if header.get("parentCommit") not in (None, head.sha):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = hub.add_regular(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                if not (blob := hub.blob(value["oid"])).exists():
                    raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                size = blob.stat().st_size
                files[value["path"]] = Entry(value["oid"], size, True, git_blob_sha(lfs_pointer(value["oid"], size)))
            elif key in ("deletedFile", "deletedFolder"):
                target = value["path"].rstrip("/")
                gone = [p for p in files if p == target or (key == "deletedFolder" and p.startswith(target + "/"))]
                if not gone:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = hub.new_commit(repo, branch, header.get("summary", ""), header.get("description", ""), files)
        url = f"{self.url_for(repo.rtype, repo.rid)}/commit/{commit.sha}"
        self.reply(200, {"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    def resolve_file(self, commit: Commit, path: str) -> None:
        entry = commit.files.get(path)
        if entry is None:  # X-Repo-Commit lets the client cache the file's absence
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.sha})
        data = self.server.blob(entry.sha256).read_bytes()
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{entry.oid}"'}
        if entry.lfs:  # the client takes the LFS sha256 as the cache key (blob file name)
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        self.reply(200, headers=headers, raw=data)


class HubServer(ThreadingHTTPServer):
    """The HTTP server and the Hub's state: repos in memory, file contents on disk by sha256."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self.hub_log: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []

    def blob(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubError(400, f"Invalid LFS oid {sha256!r}")
        return self.objects / sha256

    def store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blob(sha).write_bytes(data)
        return sha

    def add_regular(self, data: bytes) -> Entry:
        return Entry(self.store(data), len(data), False, git_blob_sha(data))

    def new_commit(self, repo: Repo, branch: str, title: str, message: str, files: dict[str, Entry]) -> Commit:
        parent = repo.branches.get(branch)
        seed = json.dumps([repo.rid, parent, title, sorted((p, e.oid) for p, e in files.items()), len(self.hub_log)])
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), title, message, date, parent, files)
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def is_lfs(self, commit: Commit, file: dict[str, Any], sample: bytes) -> bool:
        """Like the Hub: LFS if .gitattributes says so, if the file is big, or if it looks binary."""
        if file["size"] >= LFS_SIZE_THRESHOLD or b"\0" in sample:
            return True
        attrs = commit.files.get(".gitattributes")
        for line in self.blob(attrs.sha256).read_text().splitlines() if attrs else []:
            pattern, *flags = line.split() or [""]
            target = file["path"] if "/" in pattern else file["path"].rsplit("/", 1)[-1]
            if "filter=lfs" in flags and fnmatch.fnmatch(target, pattern):
                return True
        return False


@dataclass
class LocalHub:
    """What the fixture yields: ``endpoint`` for in-process use, ``env`` for subprocesses."""

    server: HubServer
    endpoint: str
    env: dict[str, str]  # its HF_HOME stays empty: the test process itself caches under ``test_home``
    test_home: Path
    requests: list[tuple[str, str]]  # (method, path) of every request, for debugging
    unknown_requests: list[tuple[str, str]]  # unrouted or crashing requests: assert it stays empty

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_hub(root: Path) -> LocalHub:
    """Serve from a daemon thread until ``.stop()``; ``root`` holds the storage and two empty HF_HOMEs."""
    server = HubServer(root / "storage")
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(root / "hf_home"), "HF_TOKEN": "test-token"}
    env.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
    return LocalHub(server, endpoint, env, root / "hf_home_test", server.hub_log, server.unknown)


def patch_client(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the already-imported client at ``hub``: its constants were computed from the env at import time."""
    from huggingface_hub import constants, hf_api

    for key, value in {**hub.env, "HF_HOME": str(hub.test_home)}.items():
        monkeypatch.setenv(key, value)
    for name, value in {
        "ENDPOINT": hub.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},  # hosts trusted with the token on redirects
        "HF_HUB_OFFLINE": False,  # tests/conftest.py sets HF_HUB_OFFLINE=1 before the import
        "HF_HUB_DISABLE_XET": True,  # hf_xet is installed and would otherwise take over uploads
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(hub.test_home),
        "HF_HUB_CACHE": str(hub.test_home / "hub"),
        "HF_TOKEN_PATH": str(hub.test_home / "token"),
    }.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)  # module-level HfApi behind create_repo & co.
    try:
        from transformers.utils import hub as tf_hub
    except ImportError:
        return
    monkeypatch.setattr(tf_hub, "_hf_api", None)  # transformers caches an HfApi built with the old endpoint


@pytest.fixture
def local_hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A running local Hub, with this process's ``huggingface_hub`` pointed at it."""
    from huggingface_hub import HfFileSystem

    hub = start_hub(tmp_path_factory.mktemp("local_hub"))
    patch_client(hub, monkeypatch)
    HfFileSystem.clear_instance_cache()  # cached instances keep the endpoint they were built with
    yield hub
    HfFileSystem.clear_instance_cache()
    hub.stop()

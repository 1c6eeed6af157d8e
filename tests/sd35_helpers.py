"""Small safetensors files that carry the *key names* of real SD3.5 / UNet / text-encoder files
with tiny shapes, for the header-only inspector and the loader's bad-input tests. numpy only."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write(path: Path, shapes: dict[str, tuple], dtype=np.float16, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(s, dtype=dtype) for k, s in shapes.items()}, str(path), metadata=metadata)
    return path


def mmdit_keys(blocks: int, attn2=(), qk_norm=True, prefix="model.diffusion_model.", hidden=8) -> dict:
    out = {f"{prefix}x_embedder.proj.weight": (hidden, 16, 2, 2), f"{prefix}pos_embed": (1, 16, hidden),
           f"{prefix}context_embedder.weight": (hidden, 4096)}
    for i in range(blocks):
        b = f"{prefix}joint_blocks.{i}."
        out[b + "context_block.attn.qkv.weight"] = (3 * hidden, hidden)
        out[b + "x_block.attn.qkv.weight"] = (3 * hidden, hidden)
        if qk_norm:
            out[b + "x_block.attn.ln_q.weight"] = (hidden // 2,)
        if i in attn2:
            out[b + "x_block.attn2.qkv.weight"] = (3 * hidden, hidden)
    return out


def diffusers_sd3_keys(blocks: int, attn2=(), qk_norm=True, hidden=8) -> dict:
    out = {"pos_embed.proj.weight": (hidden, 16, 2, 2), "context_embedder.weight": (hidden, 4096)}
    for i in range(blocks):
        b = f"transformer_blocks.{i}."
        out[b + "attn.to_q.weight"] = (hidden, hidden)
        if qk_norm:
            out[b + "attn.norm_q.weight"] = (hidden // 2,)
        if i in attn2:
            out[b + "attn2.to_q.weight"] = (hidden, hidden)
    return out


def clip_keys(layers: int, hidden: int = 8, prefix: str = "") -> dict:
    """CLIP text-model key names; ``hidden`` shows in the token embedding and final norm (what the
    inspector reads), the per-layer matrices stay tiny so even CLIP-G's 32 layers are a few KB."""
    out = {f"{prefix}text_model.embeddings.token_embedding.weight": (4, hidden),
           f"{prefix}text_model.final_layer_norm.weight": (hidden,)}
    for i in range(layers):
        out[f"{prefix}text_model.encoder.layers.{i}.mlp.fc1.weight"] = (32, 8)
    return out


def t5_keys(blocks: int = 24, d_model: int = 8) -> dict:
    out = {"shared.weight": (4, d_model), "encoder.final_layer_norm.weight": (d_model,)}
    for i in range(blocks):
        out[f"encoder.block.{i}.layer.0.SelfAttention.q.weight"] = (8, 8)
        out[f"encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"] = (16, 8)
    return out


def unet_keys(context_dim: int = 768) -> dict:
    p = "model.diffusion_model."
    return {p + "input_blocks.0.0.weight": (8, 4, 3, 3),
            p + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, context_dim)}


CONVERSION_PR_TITLE = "Adding `safetensors` variant of this model"  # the hub's conversion bot's (and transformers')


class FakeHub:
    """A fake Hugging Face hub on 127.0.0.1 answering what huggingface_hub asks huggingface.co:

    - HEAD/GET /<repo>/resolve/<revision>/<path> (``main``, a pull request's ``refs%2Fpr%2FN`` or a commit):
      X-Repo-Commit, ETag, Content-Length; 403 GatedRepo; 401 RepoNotFound; 404 EntryNotFound (with the
      revision's X-Repo-Commit where the repo has files at that revision, as the hub sends it);
    - GET /api/models/<repo>/commits/<revision> (``HfApi.list_repo_commits``): the commits, newest first;
    - GET /api/models/<repo>/discussions?p=&type=&status= (``HfApi.get_repo_discussions``): one page.

    ``add`` puts a file on main (commit ``rev``); ``add_pr`` opens a pull request with its own commit."""

    def __init__(self, rev: str = "a" * 40):
        self.rev = rev
        self.files: dict[str, bytes | Path] = {}
        self.gated: set[str] = set()
        self.refused: set[str] = set()
        self.auth: list[str] = []
        self.requests: list[str] = []  # "METHOD /path?query", in order
        self.heads: dict[tuple[str, str], str] = {}  # (repo, revision as quoted in URLs) -> commit; main -> rev
        self.parents: dict[str, str] = {}  # commit -> parent commit
        self.discussions: dict[str, list[dict]] = {}  # repo -> the hub's discussion objects
        hub_ = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _error(self, status: int, code: str, extra: dict | None = None):
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _json(self, obj, body: bool):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _api(self, parts: list[str], query: dict, body: bool):
                # /api/models/<org>/<name>/commits/<revision> or /api/models/<org>/<name>/discussions
                repo = "/".join(parts[2:4])
                if parts[4:5] == ["commits"] and len(parts) == 6:
                    commit = hub_.commit_of(repo, parts[5])
                    if commit is None:
                        return self._error(404, "RevisionNotFound")
                    chain = []
                    while commit:
                        chain.append({"id": commit, "title": f"commit {commit[:7]}", "message": "",
                                      "authors": [{"user": "someone", "avatar": ""}], "date": "2024-01-01T00:00:00.000Z"})
                        commit = hub_.parents.get(commit)
                    return self._json(chain, body)
                if parts[4:] == ["discussions"]:
                    found = [d for d in hub_.discussions.get(repo, [])
                             if query.get("type", "all") in ("all", "pull_request" if d["isPullRequest"] else "discussion")
                             and query.get("status", "all") in ("all", d["status"])
                             and query.get("author", d["author"]["name"]) == d["author"]["name"]]
                    return self._json({"discussions": found, "count": len(found), "start": 0,
                                       "numClosedDiscussions": 0}, body)
                return self._error(404, "EntryNotFound")

            def _answer(self, body: bool):
                hub_.auth.append(self.headers.get("Authorization", ""))
                hub_.requests.append(f"{self.command} {self.path}")
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.lstrip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                else:
                    repo = "/".join(parts[:2])
                if repo in hub_.gated:
                    return self._error(403, "GatedRepo", {"X-Error-Message": "Access to model is restricted."})
                if repo in hub_.refused:
                    return self._error(401, "RepoNotFound")
                if parts[:2] == ["api", "models"]:
                    return self._api(parts, dict(urllib.parse.parse_qsl(url.query)), body)
                data = hub_.files.get(url.path)
                if isinstance(data, Path):
                    data = data.read_bytes()
                commit = hub_.commit_of(repo, parts[3]) if len(parts) > 3 and parts[2] == "resolve" else None
                if data is None:
                    there = commit and any(k.startswith(f"/{repo}/resolve/{parts[3]}/") for k in hub_.files)
                    return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit} if there else None)
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

            def do_GET(self):  # noqa: N802
                self._answer(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def commit_of(self, repo: str, revision: str) -> str | None:
        """The commit a revision (as quoted in a URL) names: main, a pull request's ref, or a commit itself."""
        if revision == "main":
            return self.heads.get((repo, "main"), self.rev)
        if (repo, revision) in self.heads:
            return self.heads[(repo, revision)]
        known = {self.rev, *self.heads.values(), *self.parents}
        return revision if revision in known else None

    def add(self, repo: str, path: str, data: bytes | Path, revision: str = "main"):
        self.files[f"/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{path}"] = data

    def add_pr(self, repo: str, num: int, files: dict[str, bytes | Path], commit: str, parent: str | None = None,
               title: str = CONVERSION_PR_TITLE, author: str = "SFconvertbot", status: str = "open"):
        """A pull request ``refs/pr/<num>``: one commit (``commit``) on top of ``parent`` (default: main's head),
        carrying ``files``, listed among the repo's discussions as the hub lists it."""
        ref = f"refs/pr/{num}"
        self.heads[(repo, urllib.parse.quote(ref, safe=""))] = commit
        self.parents[commit] = parent or self.commit_of(repo, "main")
        for path, data in files.items():
            self.add(repo, path, data, ref)
        self.discussions.setdefault(repo, []).insert(0, {  # newest first, as the hub lists them
            "num": num, "title": title, "status": status, "isPullRequest": True, "createdAt": "2024-01-01T00:00:00.000Z",
            "author": {"name": author, "type": "user"}, "repo": {"name": repo, "type": "model"},
            "numComments": 1, "pinned": False, "topReactions": []})

    def close(self):
        self.server.shutdown()
        self.server.server_close()

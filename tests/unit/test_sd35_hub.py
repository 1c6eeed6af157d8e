"""Unit tier: fetching SD3.5 weights with the real huggingface_hub library, never the network.

The hub cache is a folder laid out exactly like huggingface_hub's (``models--org--name/blobs``,
``snapshots/<rev>/...`` symlinks, ``refs/main``) and HF_HUB_OFFLINE=1, except in the tests that
talk to a fake hub on 127.0.0.1 (a tiny HTTP server answering like huggingface.co does) to
exercise a real download, a gated repo and a refused token.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from pathlib import Path

import pytest
from sd35_helpers import FakeHub

from sd35wb import hub

REV = "a" * 40
MEDIUM = "stabilityai/stable-diffusion-3.5-medium"
LARGE = "stabilityai/stable-diffusion-3.5-large"


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path, monkeypatch):
    """No test here may reach the network or see the machine's real token / cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    # The default endpoint becomes the discard port on 127.0.0.1, and resolving any other host fails.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *a, **k):
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"test tried to reach {host}: tests never touch the network")
        return real_getaddrinfo(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


def cache_file(cache: Path, repo: str, path: str, data: bytes) -> Path:
    """Put ``data`` in the hub cache the way huggingface_hub does: blob + snapshot symlink + ref."""
    return cache_snapshot(cache, repo, {path: data}, REV, "main") / path


@pytest.fixture
def folders(tmp_path):
    te = tmp_path / "models" / "text_encoders"
    extra = tmp_path / "extra_te"
    te.mkdir(parents=True)
    extra.mkdir()
    return [str(te), str(extra)]


def test_known_repos_and_folders():
    assert hub.KNOWN_FILES["sd3.5_medium.safetensors"].repos == (MEDIUM,)
    assert hub.KNOWN_FILES["sd3.5_large_turbo.safetensors"].repos == ("stabilityai/stable-diffusion-3.5-large-turbo",)
    for name in ("clip_l", "clip_g", "t5xxl_fp16", "t5xxl_fp8_e4m3fn"):
        f = hub.KNOWN_FILES[f"{name}.safetensors"]
        assert f.folder == "text_encoders" and f.repo_path == f"text_encoders/{name}.safetensors" and len(f.repos) == 3
    assert {f.folder for f in hub.KNOWN_FILES.values()} == {"checkpoints", "text_encoders"}


def test_a_file_already_in_any_comfy_folder_is_used_as_is(folders, tmp_path):
    mine = Path(folders[1]) / "clip_l.safetensors"
    mine.write_bytes(b"user's own file")
    cache_file(tmp_path / "hf-cache", MEDIUM, "text_encoders/clip_l.safetensors", b"cached")
    assert hub.resolve("clip_l.safetensors", folders) == str(mine)
    assert mine.read_bytes() == b"user's own file"
    assert not (Path(folders[0]) / "clip_l.safetensors").exists()


def test_a_cached_file_is_linked_not_copied(folders, tmp_path):
    snap = cache_file(tmp_path / "hf-cache", LARGE, "text_encoders/clip_g.safetensors", b"clip-g bytes")
    logs = []
    got = hub.resolve("clip_g.safetensors", folders, log=logs.append)
    assert got == os.path.join(folders[0], "clip_g.safetensors")
    assert Path(got).read_bytes() == b"clip-g bytes"
    assert os.path.samefile(got, snap)  # a hard link (same disk) or symlink to the blob: no second copy
    assert "found in the Hugging Face cache (stabilityai/stable-diffusion-3.5-large); hardlink" in logs[0]
    assert hub.resolve("clip_g.safetensors", folders) == got  # second time: already present


def test_the_preferred_repo_is_tried_first(folders, tmp_path):
    cache_file(tmp_path / "hf-cache", MEDIUM, "text_encoders/clip_l.safetensors", b"from medium")
    cache_file(tmp_path / "hf-cache", LARGE, "text_encoders/clip_l.safetensors", b"from large")
    got = hub.resolve("clip_l.safetensors", folders, preferred_repo=LARGE)
    assert Path(got).read_bytes() == b"from large"


def test_a_broken_link_in_the_way_is_never_overwritten(folders, tmp_path):
    cache_file(tmp_path / "hf-cache", MEDIUM, "text_encoders/clip_l.safetensors", b"cached")
    dangling = Path(folders[0]) / "clip_l.safetensors"
    dangling.symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(hub.HubError, match=r"clip_l.safetensors already exists \(a broken link or a different file\); "
                                           r"it was left alone"):
        hub.resolve("clip_l.safetensors", folders)
    assert os.readlink(dangling) == str(tmp_path / "gone.safetensors")


def test_offline_and_not_cached_says_where_to_put_the_file(folders):
    with pytest.raises(hub.HubError) as e:
        hub.resolve("t5xxl_fp8_e4m3fn.safetensors", folders)
    dest = os.path.join(folders[0], "t5xxl_fp8_e4m3fn.safetensors")
    assert str(e.value) == (
        "fetch_missing: t5xxl_fp8_e4m3fn.safetensors is not in the Hugging Face cache and the hub is offline "
        f"(HF_HUB_OFFLINE is set); place the file manually at {dest} (download it from "
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/blob/main/text_encoders/t5xxl_fp8_e4m3fn.safetensors).")


def test_downloads_off(folders):
    with pytest.raises(hub.HubError, match=r"sd3.5_large.safetensors is not in the Hugging Face cache and downloads are off; "
                                           r"place the file manually at .*/sd3.5_large.safetensors"):
        hub.resolve("sd3.5_large.safetensors", folders, allow_download=False)


def test_unknown_file(folders):
    with pytest.raises(hub.HubError, match=r"my_model.safetensors is not a file this pack knows how to fetch"):
        hub.resolve("my_model.safetensors", folders)


def test_no_token(folders, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.HubError) as e:
        hub.resolve("clip_l.safetensors", folders)
    assert str(e.value).startswith(
        "fetch_missing: no Hugging Face token found for clip_l.safetensors: stabilityai/stable-diffusion-3.5-medium is "
        "gated. Accept the license at https://huggingface.co/stabilityai/stable-diffusion-3.5-medium, then run "
        "`hf auth login` (or set the HF_TOKEN environment variable)")


def test_token_from_the_login_cache_is_used(folders, monkeypatch, tmp_path, fake_hub):
    from huggingface_hub import constants

    token_file = tmp_path / "login" / "token"
    token_file.parent.mkdir()
    token_file.write_text("hf_from_login_cache")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    hub.resolve("clip_l.safetensors", folders, endpoint=fake_hub.url)
    assert fake_hub.auth == ["Bearer hf_from_login_cache"] * 2  # HEAD + GET


def test_huggingface_hub_missing(folders, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # what `import` sees when it is not installed
    with pytest.raises(hub.HubError, match=r"the huggingface_hub package is not installed; run `pip install huggingface_hub`"):
        hub.resolve("clip_l.safetensors", folders)


def test_disk_full_before_download(folders, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    real = hub.shutil.disk_usage

    def tiny_disk(p):
        u = real(p)
        return type(u)(u.total, u.total - 1_000_000_000, 1_000_000_000)  # 1 GB free

    monkeypatch.setattr(hub.shutil, "disk_usage", tiny_disk)
    with pytest.raises(hub.HubError, match=rf"not enough disk space: free 8\.8 GB at {tmp_path}/hf-cache, then run again"):
        hub.resolve("t5xxl_fp16.safetensors", folders)


def test_copy_fallback_reports_enospc(folders, tmp_path, monkeypatch):
    """Where neither a hard link nor a symlink can be made, the file is copied; a full disk says so."""
    snap = cache_file(tmp_path / "hf-cache", MEDIUM, "text_encoders/clip_l.safetensors", b"x" * 1000)

    def no_links(*_a, **_k):
        raise OSError(errno.EPERM, "links not allowed here")

    def full_copy(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(hub.os, "link", no_links)
        m.setattr(hub.os, "symlink", no_links)
        dest = tmp_path / "copy" / "c.safetensors"
        assert hub.link_into(str(snap), str(dest)) == "copy" and dest.read_bytes() == b"x" * 1000
        m.setattr(hub.shutil, "copyfile", full_copy)
        with pytest.raises(hub.HubError, match=rf"not enough disk space: free 0\.1 GB at {folders[0]}"):
            hub.resolve("clip_l.safetensors", folders)
    assert not list(Path(folders[0]).iterdir()), "no partial file left behind"


# ---------------------------------------------------------------------------------------------
# A fake hub on 127.0.0.1 (HEAD/GET like huggingface.co's resolve endpoint)


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    h = FakeHub(REV)
    h.add(MEDIUM, "text_encoders/clip_l.safetensors", b"L" * 300_000)
    yield h
    h.close()


def test_download_with_progress_then_link(folders, monkeypatch, fake_hub, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    seen = []
    got = hub.resolve("clip_l.safetensors", folders, endpoint=fake_hub.url, progress=lambda n, t: seen.append((n, t)))
    assert Path(got).read_bytes() == b"L" * 300_000
    assert got == os.path.join(folders[0], "clip_l.safetensors")
    assert seen and seen[-1] == (300_000, 300_000) and all(t == 300_000 for _, t in seen)
    # landed in the hub cache too (the next ComfyUI folder can link it without a download)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(MEDIUM, "text_encoders/clip_l.safetensors", cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(cached, str) and os.path.samefile(cached, got)
    assert fake_hub.auth[0] == "Bearer hf_test"


def test_gated_repo(folders, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_TOKEN", "hf_not_accepted")
    # The 16.5 GB pre-download space check must not depend on how full this machine's disk is.
    real = hub.shutil.disk_usage
    monkeypatch.setattr(hub.shutil, "disk_usage", lambda p: real(p)._replace(free=10**12))
    fake_hub.gated.add(LARGE)
    with pytest.raises(hub.HubError) as e:
        hub.resolve("sd3.5_large.safetensors", [folders[0]], endpoint=fake_hub.url)
    assert str(e.value) == (
        "fetch_missing: stabilityai/stable-diffusion-3.5-large is a gated repository: accept the license at "
        "https://huggingface.co/stabilityai/stable-diffusion-3.5-large while logged in, then run `hf auth login` "
        "(or set the HF_TOKEN environment variable) and restart ComfyUI. The token is never taken from a node input.")


def test_refused_token(folders, monkeypatch, fake_hub):
    monkeypatch.setenv("HF_TOKEN", "hf_expired")
    fake_hub.refused.add(MEDIUM)
    with pytest.raises(hub.HubError, match=r"the hub refused stabilityai/stable-diffusion-3.5-medium with your token "
                                           r"\(invalid, expired, or without access\): check it with `hf auth whoami`"):
        hub.resolve("clip_l.safetensors", folders, endpoint=fake_hub.url)


def test_unreachable_hub(folders, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda _s: None)  # its 5 retries back off for 23 s otherwise
    with pytest.raises(hub.HubError, match=r"clip_l.safetensors could not be downloaded: .*place the file manually at "):
        hub.resolve("clip_l.safetensors", folders, endpoint="http://127.0.0.1:9")  # nothing listens there


# ---------------------------------------------------------------------------------------------
# The LCM-LoRA fetch takes the same hub path (sd35wb.hub): cache lookup, HF_ENDPOINT, errors


def test_lcm_lora_downloads_through_the_same_hub_path(monkeypatch, fake_hub, tmp_path):
    from sd35wb import lcm

    k = lcm.known_for_family("SDXL")
    payload = b"LCM" * 50_000
    fake_hub.add(k.repo_id, k.filename, payload)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)  # the old LCM fetch ignored it
    monkeypatch.setenv("HF_TOKEN", "hf_lcm")
    got = lcm.fetch_known(k)
    assert got.read_bytes() == payload
    assert str(got).startswith(str(tmp_path / "hf-cache")), "into the hub cache both fetches use"
    assert fake_hub.auth[0] == "Bearer hf_lcm"
    served = len(fake_hub.auth)
    assert lcm.fetch_known(k) == got and len(fake_hub.auth) == served, "second time: from the cache, no request"
    from huggingface_hub import try_to_load_from_cache

    assert try_to_load_from_cache(k.repo_id, k.filename, cache_dir=str(tmp_path / "hf-cache")) == str(got)


def test_lcm_lora_gated_unreachable_and_offline_read_like_the_loaders(monkeypatch, fake_hub, tmp_path):
    from sd35wb import lcm

    k = lcm.known_for_family("SD1.5")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    fake_hub.gated.add(k.repo_id)
    with pytest.raises(ValueError, match=r"lcm_lora: latent-consistency/lcm-lora-sdv1-5 is gated: accept its terms"):
        lcm.fetch_known(k)
    fake_hub.gated.clear()
    with pytest.raises(ValueError, match=r"(?s)lcm_lora: downloading latent-consistency/lcm-lora-sdv1-5/\S+ failed "
                                         r"\(\w*EntryNotFoundError.*`hf download latent-consistency"):
        lcm.fetch_known(k)  # the fake hub has no such file: 404 EntryNotFound
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda _s: None)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"is not in the Hugging Face cache .*no connection to the hub"):
        lcm.fetch_known(k)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"HF_HUB_OFFLINE is set"):
        lcm.fetch_known(k)
    assert not list((tmp_path / "hf-cache").rglob("*.safetensors"))


def test_one_hub_path_for_loader_and_lcm():
    import inspect

    from sd35wb import lcm

    src = inspect.getsource(lcm)
    assert "hf_hub_download" not in src and "try_to_load_from_cache" not in src, "lcm goes through sd35wb.hub"
    assert lcm.hf_cache_dir() == Path(hub.hub_cache_dir())


# ---------------------------------------------------------------------------------------------
# The Sweep Scores' CLIP model (sd35wb.hub.fetch_folder): a whole public folder, safetensors only. Where the
# repo's main has only pickles (pytorch_model.bin), the files come from the hub's safetensors conversion pull
# request, found as transformers finds it (an open PR by SFconvertbot with its title, on main's latest commit).

CLIP = "openai/clip-vit-large-patch14-336"
CLIP_FILES = hub.SCORING_REPOS[CLIP]
PR_COMMIT, OLD_MAIN = "c" * 40, "b" * 40
WEIGHTS = b"safetensors weights from the bot"


def main_with_pickles_only(fake: FakeHub):
    """The repo as it is believed to be: main has the config and tokenizer files and pytorch_model.bin."""
    for name in CLIP_FILES:
        if name != "model.safetensors":
            fake.add(CLIP, name, f"{name} at main".encode())
    fake.add(CLIP, "pytorch_model.bin", b"a pickle, never loaded")


def bot_pr(fake: FakeHub, num: int, commit: str = PR_COMMIT, **kw):
    """The conversion bot's PR: main's files plus model.safetensors, one commit on top of its parent."""
    files = {name: f"{name} at main".encode() for name in CLIP_FILES}
    files["model.safetensors"] = WEIGHTS
    fake.add_pr(CLIP, num, files, commit, **kw)


def resolves_at(fake: FakeHub, rev: str) -> list[str]:
    return [r for r in fake.requests if f"/resolve/{rev}/" in r]


def test_clip_from_main_when_main_has_the_weights(fake_hub, tmp_path):
    for name in CLIP_FILES:
        fake_hub.add(CLIP, name, f"{name} at main".encode())
    bot_pr(fake_hub, 1)  # there, but never asked for
    logs = []
    got = hub.fetch_folder(CLIP, endpoint=fake_hub.url, log=logs.append)
    assert got == str(tmp_path / "hf-cache" / "models--openai--clip-vit-large-patch14-336" / "snapshots" / REV)
    assert sorted(os.listdir(got)) == sorted(CLIP_FILES)
    assert Path(got, "model.safetensors").read_bytes() == b"model.safetensors at main"
    assert not [r for r in fake_hub.requests if "/api/" in r], "no commits or discussions call"
    assert not resolves_at(fake_hub, "refs%2Fpr%2F1") and logs == []


def test_clip_from_the_conversion_pr_when_main_has_only_pickles(fake_hub, tmp_path):
    main_with_pickles_only(fake_hub)
    bot_pr(fake_hub, 7)
    fake_hub.discussions[CLIP].append({**fake_hub.discussions[CLIP][0], "num": 2, "isPullRequest": False,
                                       "title": "Is this model still maintained?"})  # a discussion, not a PR
    logs = []
    got = hub.fetch_folder(CLIP, endpoint=fake_hub.url, log=logs.append)
    assert got == str(tmp_path / "hf-cache" / "models--openai--clip-vit-large-patch14-336" / "snapshots" / PR_COMMIT)
    assert sorted(os.listdir(got)) == sorted(CLIP_FILES), "every file in the PR's one snapshot"
    assert Path(got, "model.safetensors").read_bytes() == WEIGHTS
    assert Path(got, "vocab.json").read_bytes() == b"vocab.json at main"
    assert not [r for r in fake_hub.requests if "pytorch_model.bin" in r], "the pickle is never fetched"
    assert len(resolves_at(fake_hub, "refs%2Fpr%2F7")) >= len(CLIP_FILES)  # each file asked for at the PR
    assert len(logs) == 1 and "refs/pr/7" in logs[0] and "no model.safetensors on main" in logs[0]
    served = len(fake_hub.requests)
    fake_hub.close()
    logs.clear()
    assert hub.fetch_folder(CLIP, endpoint=fake_hub.url, log=logs.append) == got, "second time: the cache, hub gone"
    assert len(fake_hub.requests) == served and "refs/pr/7" in logs[0]


def test_a_conversion_pr_on_an_older_main_is_not_used(fake_hub):
    main_with_pickles_only(fake_hub)
    bot_pr(fake_hub, 2)  # on main's head
    bot_pr(fake_hub, 4, commit="d" * 40, parent=OLD_MAIN)  # newer PR, but main has moved on since
    fake_hub.parents[REV] = OLD_MAIN
    got = hub.fetch_folder(CLIP, endpoint=fake_hub.url, log=lambda _m: None)
    assert os.path.basename(got) == PR_COMMIT
    assert not resolves_at(fake_hub, "refs%2Fpr%2F4")


@pytest.mark.parametrize("pr", [None, {"parent": OLD_MAIN}, {"author": "someone-else"}, {"status": "closed"}],
                         ids=["no PR", "on an older main", "not the bot", "closed"])
def test_no_usable_conversion_pr_says_what_to_do(fake_hub, tmp_path, pr):
    main_with_pickles_only(fake_hub)
    if pr is not None:
        bot_pr(fake_hub, 1, **pr)
    with pytest.raises(hub.HubError) as e:
        hub.fetch_folder(CLIP, endpoint=fake_hub.url)
    assert str(e.value) == (
        "clip_model: openai/clip-vit-large-patch14-336 has no model.safetensors on main, only pickle weights "
        "(pytorch_model.bin), which this pack does not load, and no open safetensors conversion pull request by "
        "SFconvertbot on main's latest commit (https://huggingface.co/openai/clip-vit-large-patch14-336/discussions); "
        "download a safetensors copy of the model into one folder ComfyUI/models/clip_vision/<folder>/ (config.json, "
        "preprocessor_config.json, tokenizer_config.json, special_tokens_map.json, vocab.json, merges.txt, "
        "model.safetensors, the weights as model.safetensors) and pick its model.safetensors instead")
    assert not resolves_at(fake_hub, "refs%2Fpr%2F1")
    assert not list((tmp_path / "hf-cache").rglob("snapshots/*/model.safetensors"))


def cache_snapshot(cache: Path, repo: str, files: dict[str, bytes], commit: str, ref: str) -> Path:
    """``files`` at ``commit`` in the hub cache, named by ``ref`` as huggingface_hub writes it (refs/<ref>)."""
    base = cache / ("models--" + repo.replace("/", "--"))
    for path, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        snap = base / "snapshots" / commit / path
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.symlink_to(os.path.relpath(blob, snap.parent))
    (base / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (base / "refs" / ref).write_text(commit)
    return base / "snapshots" / commit


def test_clip_offline_from_a_cached_conversion_pr(tmp_path):
    cache = tmp_path / "hf-cache"
    at_main = {name: f"{name} at main".encode() for name in CLIP_FILES if name != "model.safetensors"}
    cache_snapshot(cache, CLIP, at_main, REV, "main")  # what the download left: main without the weights
    no_weights = cache / "models--openai--clip-vit-large-patch14-336" / ".no_exist" / REV / "model.safetensors"
    no_weights.parent.mkdir(parents=True)
    no_weights.touch()
    partial = cache_snapshot(cache, CLIP, {"config.json": b"{}"}, "e" * 40, "refs/pr/9")  # an incomplete PR
    snap = cache_snapshot(cache, CLIP, {**at_main, "model.safetensors": WEIGHTS}, PR_COMMIT, "refs/pr/3")
    logs = []
    assert hub.fetch_folder(CLIP, log=logs.append) == str(snap) != str(partial)
    assert logs == ["clip_model: openai/clip-vit-large-patch14-336 from the Hugging Face cache at refs/pr/3 "
                    "(its safetensors conversion pull request)"]
    (snap / "vocab.json").unlink()  # no complete set left: offline says so
    with pytest.raises(hub.HubError, match=r"clip_model: openai/clip-vit-large-patch14-336/model.safetensors is not in "
                                           r"the Hugging Face cache and the hub is offline \(HF_HUB_OFFLINE is set\)"):
        hub.fetch_folder(CLIP)

"""Fetch missing SD3.5 weights from the Hugging Face hub into ComfyUI's model folders.

Resolution order for a known file (see :data:`KNOWN_FILES`):

1. already in one of the ComfyUI folders -> use it;
2. in the huggingface_hub cache (``try_to_load_from_cache``, any of the repos that carry it) ->
   hard-link it into the ComfyUI folder (no extra disk), else symlink, else copy;
3. else download with ``hf_hub_download`` into the hub cache (progress reported through a
   callback) and link it the same way.

A user's file is never overwritten. The token comes from ``HF_TOKEN`` or the huggingface_hub
login cache only (``huggingface_hub.get_token``), never from a node input: node inputs are saved
in every PNG's metadata. Every failure becomes a :class:`HubError` whose message says what to do
(gated repo, no token, offline, disk full, huggingface_hub missing).

Plain module: ``huggingface_hub`` is imported lazily inside functions.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

REPOS = {
    "medium": "stabilityai/stable-diffusion-3.5-medium",
    "large": "stabilityai/stable-diffusion-3.5-large",
    "large_turbo": "stabilityai/stable-diffusion-3.5-large-turbo",
}
_ALL = tuple(REPOS.values())


@dataclass(frozen=True)
class HubFile:
    name: str  # file name in the ComfyUI folder
    folder: str  # ComfyUI folder name ("checkpoints", "text_encoders")
    repo_path: str  # path inside the repo
    repos: tuple[str, ...]  # repos carrying the same file, preferred first
    size_gb: float  # approximate download size


KNOWN_FILES: dict[str, HubFile] = {f.name: f for f in (
    # Single-file models: MMDiT + VAE (no text encoders) -> models/checkpoints
    HubFile("sd3.5_medium.safetensors", "checkpoints", "sd3.5_medium.safetensors", (REPOS["medium"],), 5.1),
    HubFile("sd3.5_large.safetensors", "checkpoints", "sd3.5_large.safetensors", (REPOS["large"],), 16.5),
    HubFile("sd3.5_large_turbo.safetensors", "checkpoints", "sd3.5_large_turbo.safetensors", (REPOS["large_turbo"],), 16.5),
    # Text encoders: the same files in all three repos -> models/text_encoders
    HubFile("clip_l.safetensors", "text_encoders", "text_encoders/clip_l.safetensors", _ALL, 0.25),
    HubFile("clip_g.safetensors", "text_encoders", "text_encoders/clip_g.safetensors", _ALL, 1.4),
    HubFile("t5xxl_fp16.safetensors", "text_encoders", "text_encoders/t5xxl_fp16.safetensors", _ALL, 9.8),
    HubFile("t5xxl_fp8_e4m3fn.safetensors", "text_encoders", "text_encoders/t5xxl_fp8_e4m3fn.safetensors", _ALL, 4.9),
)}


class HubError(RuntimeError):
    """Fetching failed; the message says what the user should do."""


def repo_url(repo: str) -> str:
    return f"https://huggingface.co/{repo}"


def file_url(repo: str, path: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/{path}"


def _hf():
    try:
        import huggingface_hub
    except ImportError as e:
        raise HubError("fetch_missing: the huggingface_hub package is not installed; run "
                       "`pip install huggingface_hub` in ComfyUI's Python environment, or place the files manually.") from e
    return huggingface_hub


def is_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub sees it (read at its import) or as set now."""
    v = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    if v in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str:
    """The hub cache folder huggingface_hub uses, read from the environment now (it reads it once, at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                      "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def endpoint_url(endpoint: str | None = None) -> str | None:
    return endpoint or os.environ.get("HF_ENDPOINT") or None


def cached(repo: str, path: str, cache: str | None = None, revision: str | None = None) -> str | None:
    """The file from the hub cache (huggingface_hub's own lookup; ``revision`` default main), or None."""
    got = _hf().try_to_load_from_cache(repo, path, cache_dir=cache or hub_cache_dir(), revision=revision)
    return got if isinstance(got, str) and os.path.isfile(got) else None


def classify(exc: BaseException) -> str:
    """What a failed download means, by exception type: "disk_full", "gated", "refused",
    "offline", "unreachable", "missing" (the hub has no such file at that revision) or "other"."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full"
    try:
        from huggingface_hub import errors
    except ImportError:
        return "other"
    if isinstance(exc, errors.GatedRepoError):
        return "gated"
    if isinstance(exc, errors.RepositoryNotFoundError):  # 401 with or without a token
        return "refused"
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return "offline"
    if isinstance(exc, errors.LocalEntryNotFoundError):  # connection failed and nothing cached
        return "unreachable"
    transport: list[type] = [ConnectionError, TimeoutError]
    for mod, names in (("requests.exceptions", ("ConnectionError", "Timeout")), ("httpx", ("TransportError",))):
        try:
            m = __import__(mod, fromlist=list(names))
            transport += [getattr(m, n) for n in names]
        except ImportError:
            pass
    if isinstance(exc, tuple(transport)):
        return "unreachable"
    if isinstance(exc, errors.EntryNotFoundError):  # 404 EntryNotFound (the local kind returned above)
        return "missing"
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return "refused" if status in (401, 403) else "other"
    return "other"


class DownloadFailed(HubError):
    def __init__(self, exc: BaseException):
        super().__init__(str(exc))
        self.kind, self.exc = classify(exc), exc


def download(repo: str, path: str, cache: str | None = None, endpoint: str | None = None, token=None,
             progress: Callable[[int, int], None] | None = None, revision: str | None = None) -> str:
    """hf_hub_download into the hub cache (HF_ENDPOINT honoured; ``revision`` default main); raises
    DownloadFailed(kind)."""
    hub = _hf()
    try:
        return hub.hf_hub_download(repo, path, revision=revision, token=token, cache_dir=cache or hub_cache_dir(),
                                   endpoint=endpoint_url(endpoint),
                                   tqdm_class=_progress_tqdm(progress) if progress else None)
    except Exception as e:  # noqa: BLE001 - classified by type; the caller words it for its input
        raise DownloadFailed(e) from e


def find_local(name: str, folders: list[str]) -> str | None:
    for d in folders:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return None


def find_in_cache(hf: HubFile, cache: str | None = None) -> tuple[str, str] | None:
    """(repo, path in the hub cache) for the first repo whose cached snapshot has the file."""
    for repo in hf.repos:
        got = cached(repo, hf.repo_path, cache)
        if got:
            return repo, got
    return None


def link_into(src: str, dest: str) -> str:
    """Place ``src`` at ``dest`` without overwriting anything: hard link (same disk, no extra
    space), else symlink, else copy. Returns how ("hardlink", "symlink", "copy")."""
    if os.path.lexists(dest):
        raise HubError(f"fetch_missing: {dest} already exists (a broken link or a different file); it was left "
                       "alone. Remove or rename it, then run again.")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    real = os.path.realpath(src)  # hub snapshots are symlinks into blobs/
    try:
        os.link(real, dest)
        return "hardlink"
    except OSError:
        pass
    try:
        os.symlink(real, dest)
        return "symlink"
    except OSError:
        pass
    need = os.path.getsize(real)
    free = shutil.disk_usage(os.path.dirname(dest)).free
    if free < need:
        raise HubError(_disk_full_msg(os.path.dirname(dest), need - free))
    tmp = f"{dest}.sd35wb-partial-{os.getpid()}-{os.urandom(4).hex()}"  # two fetches at once never share it
    try:
        shutil.copyfile(real, tmp)
        os.replace(tmp, dest)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if e.errno == errno.ENOSPC:
            raise HubError(_disk_full_msg(os.path.dirname(dest), need)) from e
        raise
    return "copy"


def _disk_full_msg(where: str, need_bytes: float) -> str:
    gb = max(need_bytes / 1e9, 0.1)
    return f"fetch_missing: not enough disk space: free {gb:.1f} GB at {where}, then run again."


def _manual_msg(hf: HubFile, dest: str, why: str) -> str:
    return (f"fetch_missing: {hf.name} {why}; place the file manually at {dest} "
            f"(download it from {file_url(hf.repos[0], hf.repo_path)}).")


def _gated_msg(repo: str) -> str:
    return (f"fetch_missing: {repo} is a gated repository: accept the license at {repo_url(repo)} while logged "
            "in, then run `hf auth login` (or set the HF_TOKEN environment variable) and restart ComfyUI. "
            "The token is never taken from a node input.")


def _progress_tqdm(callback: Callable[[int, int], None]):
    from tqdm.auto import tqdm

    class _Progress(tqdm):
        def __init__(self, *a, **kw):
            kw["disable"] = False
            super().__init__(*a, **kw)

        def update(self, n=1):
            out = super().update(n)
            if self.total:
                callback(int(self.n), int(self.total))
            return out

    return _Progress


def resolve(name: str, folders: list[str], allow_download: bool = True, progress: Callable[[int, int], None] | None = None,
            preferred_repo: str | None = None, cache_dir: str | None = None, endpoint: str | None = None,
            log: Callable[[str], None] | None = None) -> str:
    """Path of ``name`` in the ComfyUI ``folders`` (the first is where fetched files go),
    fetching it as described in the module docstring. Raises :class:`HubError`."""
    log = log or (lambda _m: None)
    # honoured even when set after huggingface_hub was imported (it reads them once, at import)
    cache_dir = cache_dir or hub_cache_dir()
    here = find_local(name, folders)
    if here:
        return here
    hf = KNOWN_FILES.get(name)
    if hf is None:
        raise HubError(f"fetch_missing: {name} is not a file this pack knows how to fetch (known: "
                       f"{', '.join(KNOWN_FILES)}); place it in {folders[0]}.")
    dest = os.path.join(folders[0], name)
    if preferred_repo in hf.repos:
        hf = HubFile(hf.name, hf.folder, hf.repo_path, (preferred_repo,) + tuple(r for r in hf.repos if r != preferred_repo),
                     hf.size_gb)
    hub = _hf()
    cached = find_in_cache(hf, cache_dir)
    if cached:
        how = link_into(cached[1], dest)
        log(f"{name}: found in the Hugging Face cache ({cached[0]}); {how} -> {dest}")
        return dest
    if not allow_download:
        raise HubError(_manual_msg(hf, dest, "is not in the Hugging Face cache and downloads are off"))
    if is_offline():
        raise HubError(_manual_msg(hf, dest, "is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE is set)"))
    token = hub.get_token()
    repo = hf.repos[0]
    if not token:
        raise HubError(f"fetch_missing: no Hugging Face token found for {hf.name}: {repo} is gated. Accept the license at "
                       f"{repo_url(repo)}, then run `hf auth login` (or set the HF_TOKEN environment variable) and "
                       f"restart ComfyUI; or place the file manually at {dest}.")
    cache_root = cache_dir
    probe = cache_root
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    need = hf.size_gb * 1e9
    free = shutil.disk_usage(probe).free
    if free < need:
        raise HubError(_disk_full_msg(cache_root, need - free))
    log(f"{name}: downloading from {repo} ({hf.size_gb:.1f} GB) into the Hugging Face cache")
    try:
        path = download(repo, hf.repo_path, cache_dir, endpoint, token, progress)
    except DownloadFailed as e:
        msg = {"gated": _gated_msg(repo),
               "refused": f"fetch_missing: the hub refused {repo} with your token (invalid, expired, or without access): "
                          f"check it with `hf auth whoami`, accept the license at {repo_url(repo)}, then run "
                          "`hf auth login` again or set HF_TOKEN.",
               "offline": _manual_msg(hf, dest, "could not be downloaded: the hub is offline (HF_HUB_OFFLINE is set)"),
               "unreachable": _manual_msg(hf, dest, f"could not be downloaded: the hub is unreachable "
                                                    f"({e.exc.__class__.__name__})"),
               "disk_full": _disk_full_msg(cache_root, need)}.get(e.kind)
        raise HubError(msg or _manual_msg(hf, dest, f"could not be downloaded ({e.exc})")) from e.exc
    how = link_into(path, dest)
    log(f"{name}: downloaded; {how} -> {dest}")
    return dest


# ---------------------------------------------------------------------------------------------
# Public scoring models (no licence gate, no token): a whole Hugging Face folder, not one file

SCORING_REPOS: dict[str, tuple[str, ...]] = {
    # SimpleTuner's default --pretrained_evaluation_model_name_or_path (its CLIP evaluation)
    "openai/clip-vit-large-patch14-336": ("config.json", "preprocessor_config.json", "tokenizer_config.json",
                                          "special_tokens_map.json", "vocab.json", "merges.txt", "model.safetensors"),
}


# The hub's conversion bot opens this pull request with a safetensors copy of a repo whose main has only pickles;
# transformers loads from it in that case (transformers/safetensors_conversion.py), and so does fetch_folder.
CONVERSION_PR_TITLE = "Adding `safetensors` variant of this model"
CONVERSION_BOT = "SFconvertbot"
WEIGHTS = "model.safetensors"


def cached_pr_refs(repo: str, cache: str | None = None) -> list[str]:
    """The pull-request revisions (``refs/pr/N``, newest first) the hub cache holds a ref for: huggingface_hub
    writes revision R's commit to ``models--<org>--<name>/refs/<R>``, so refs/pr/N sits at refs/refs/pr/N."""
    pr_dir = os.path.join(cache or hub_cache_dir(), "models--" + repo.replace("/", "--"), "refs", "refs", "pr")
    try:
        nums = [int(n) for n in os.listdir(pr_dir) if re.fullmatch(r"\d+", n) and os.path.isfile(os.path.join(pr_dir, n))]
    except OSError:
        return []
    return [f"refs/pr/{n}" for n in sorted(nums, reverse=True)]


def conversion_pr(repo: str, endpoint: str | None = None, token=None) -> str | None:
    """The git ref (``refs/pr/N``) of the open safetensors conversion pull request on main's latest commit, found
    as transformers finds it (``previous_pr``: the bot's title, open, and its parent commit is main's head; here
    also opened by the bot, as transformers requires of a public repo), or None. Raises DownloadFailed."""
    hub = _hf()
    try:
        api = hub.HfApi(endpoint=endpoint_url(endpoint), token=token)
        head = api.list_repo_commits(repo)[0].commit_id
        for d in api.get_repo_discussions(repo, discussion_type="pull_request", discussion_status="open"):
            if not (d.is_pull_request and d.status == "open" and d.title == CONVERSION_PR_TITLE
                    and d.author == CONVERSION_BOT):
                continue
            commits = api.list_repo_commits(repo, revision=d.git_reference)
            if len(commits) > 1 and commits[1].commit_id == head:  # a PR on an older main pairs old weights with new files
                return d.git_reference
    except Exception as e:  # noqa: BLE001 - classified by type, as download()'s
        raise DownloadFailed(e) from e
    return None


def fetch_folder(repo: str, allow_download: bool = True, progress: Callable[[int, int], None] | None = None,
                 cache_dir: str | None = None, endpoint: str | None = None, what: str = "clip_model",
                 log: Callable[[str], None] | None = None) -> str:
    """The snapshot folder of a public scoring model in the Hugging Face cache, downloading the files it
    lacks (weights as safetensors only). Where main has no ``model.safetensors`` (only pickles), every file
    comes from the hub's safetensors conversion pull request instead (:func:`conversion_pr`), so they share
    one snapshot. ``log`` (default: the pack's logger) hears which revision was used. Raises
    :class:`HubError` saying where to place them by hand."""
    files = SCORING_REPOS.get(repo)
    if files is None:
        raise HubError(f"{what}: {repo} is not a scoring model this pack fetches (known: {', '.join(SCORING_REPOS)})")
    log = log or logging.getLogger("sd35-workbench").info
    cache_dir = cache_dir or hub_cache_dir()
    manual = (f"download {', '.join(files)} from {repo_url(repo)} (where main has no model.safetensors, from its "
              f"'{CONVERSION_PR_TITLE}' pull request) into one folder under ComfyUI/models/clip_vision/ and pick its "
              "model.safetensors instead")
    for rev in [None, *cached_pr_refs(repo, cache_dir)]:  # a complete cached set: main's, else a conversion PR's
        got = {name: cached(repo, name, cache_dir, rev) for name in files}
        if all(got.values()):
            if rev:
                log(f"{what}: {repo} from the Hugging Face cache at {rev} (its safetensors conversion pull request)")
            return _one_snapshot(repo, got, cache_dir, what)

    got = {}
    for name in files:
        here = cached(repo, name, cache_dir)
        if here is None:
            if not allow_download:
                raise HubError(f"{what}: {repo}/{name} is not in the Hugging Face cache and downloads are off; {manual}")
            if is_offline():
                raise HubError(f"{what}: {repo}/{name} is not in the Hugging Face cache and the hub is offline "
                               f"(HF_HUB_OFFLINE is set); {manual}")
            try:
                here = download(repo, name, cache_dir, endpoint, None, progress)
            except DownloadFailed as e:
                if e.kind == "missing" and name == WEIGHTS:  # main has only pickles (pytorch_model.bin): the bot's PR
                    return _fetch_conversion_pr(repo, files, progress, cache_dir, endpoint, what, log, manual)
                raise _download_error(what, repo, name, None, e, manual) from e.exc
        got[name] = here
    return _one_snapshot(repo, got, cache_dir, what)


def _why(e: DownloadFailed) -> str:
    return {"unreachable": "the hub is unreachable", "offline": "the hub is offline",
            "disk_full": "the disk is full"}.get(e.kind, str(e.exc).splitlines()[0])


def _download_error(what: str, repo: str, name: str, rev: str | None, e: DownloadFailed, manual: str) -> HubError:
    return HubError(f"{what}: could not download {repo}/{name}{f' at {rev}' if rev else ''} ({_why(e)}); {manual}")


def _fetch_conversion_pr(repo: str, files: tuple[str, ...], progress: Callable[[int, int], None] | None, cache_dir: str,
                         endpoint: str | None, what: str, log: Callable[[str], None], manual: str) -> str:
    try:
        ref = conversion_pr(repo, endpoint)
    except DownloadFailed as e:
        raise HubError(f"{what}: {repo} has no {WEIGHTS} on main and its safetensors conversion pull request could "
                       f"not be looked up ({_why(e)}); run again when the hub answers, or {_own_copy(files)}") from e.exc
    if ref is None:
        raise HubError(f"{what}: {repo} has no {WEIGHTS} on main, only pickle weights (pytorch_model.bin), which this "
                       f"pack does not load, and no open safetensors conversion pull request by {CONVERSION_BOT} on "
                       f"main's latest commit ({repo_url(repo)}/discussions); {_own_copy(files)}")
    log(f"{what}: {repo} has no {WEIGHTS} on main; downloading all its files at {ref} "
        f"(the hub's safetensors conversion pull request, as transformers loads it)")
    got = {}
    for name in files:  # every file at the PR's revision, so they share its snapshot
        try:
            got[name] = download(repo, name, cache_dir, endpoint, None, progress, ref)
        except DownloadFailed as e:
            raise _download_error(what, repo, name, ref, e, manual) from e.exc
    return _one_snapshot(repo, got, cache_dir, what)


def _own_copy(files: tuple[str, ...]) -> str:
    return (f"download a safetensors copy of the model into one folder ComfyUI/models/clip_vision/<folder>/ ("
            f"{', '.join(files)}, the weights as {WEIGHTS}) and pick its {WEIGHTS} instead")


def _one_snapshot(repo: str, got: dict[str, str], cache_dir: str, what: str) -> str:
    folders = {os.path.dirname(p) for p in got.values()}
    if len(folders) != 1:  # two snapshots (the repo changed between downloads) would pair one revision's weights with another's config
        raise HubError(f"{what}: the cached files of {repo} come from different revisions; delete "
                       f"{os.path.join(cache_dir, 'models--' + repo.replace('/', '--'))} and run again")
    return folders.pop()

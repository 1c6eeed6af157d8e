"""Checks for names and paths that reach the file system (run names, output_dir), made up front.

A run name becomes a folder under two model folders and the stem of file names such as
``<run>-final.safetensors`` (plus this pack's temporary suffixes), so it must be one plain path
component that every OS ComfyUI runs on accepts, and short enough that those file names fit in
255 bytes. Paths from a user (output_dir) are checked for length, control characters and
encoded separators before anything resolves them. Every error names the input and says what
to do.
"""

from __future__ import annotations

import re
import unicodedata

NAME_MAX = 255  # bytes per path component (ext4, APFS, NTFS in UTF-16 units: the stricter count is ours)
PATH_MAX = 4095  # bytes per path (Linux PATH_MAX less the NUL)
RUN_MAX = 160  # leaves room for "-final.safetensors" and ".<name>.sd35wb-tmp-<pid>-<token>"
_WINDOWS_RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM[0-9¹²³]|LPT[0-9¹²³])(\..*)?$", re.IGNORECASE)
_WINDOWS_BAD = set('<>:"|?*')
_ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_BIDI = {"\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def _controls(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI]


def _show(text: str, limit: int = 60) -> str:
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 5] + "...'"


def check_run_name(run, field: str = "run") -> str:
    """``run`` stripped, if it is a safe single folder name; else ValueError naming ``field``."""
    if not isinstance(run, str) or not run.strip():
        raise ValueError(f"{field}: the run name is empty; give a folder name such as 'my-sd35-run'")
    run = run.strip()
    bad = _controls(run)
    if bad:
        raise ValueError(f"{field}: {_show(run)} contains control characters ({', '.join(map(repr, sorted(set(bad))))}); "
                         "use letters, digits, '-', '_' and '.'")
    size = len(run.encode("utf-8", "surrogatepass"))
    if size > RUN_MAX:
        raise ValueError(f"{field}: {_show(run)} is {size} bytes long, over the limit of {RUN_MAX}: it becomes file "
                         f"names like '<run>-final.safetensors' (at most {NAME_MAX} bytes); use a shorter name")
    folded = unicodedata.normalize("NFKC", run)
    for form in {run, folded}:
        if "/" in form or "\\" in form or "\x00" in form or form in (".", "..") or form.startswith("."):
            raise ValueError(f"{field}: {_show(run)} is not a plain folder name (no '/', '\\', leading '.' or '..', "
                             "also as look-alike Unicode); it becomes a subfolder of ComfyUI's diffusion_models and "
                             "loras folders")
    if _ENCODED.search(run):
        raise ValueError(f"{field}: {_show(run)} looks URL-encoded ('%2e', '%2f', '%5c' or '%00'); give the "
                         "plain name")
    if set(run) & _WINDOWS_BAD or run[-1] in ". " or _WINDOWS_RESERVED.match(run):
        raise ValueError(f"{field}: {_show(run)} is not a folder name Windows accepts (no <>:\"|?*, no trailing "
                         "'.' or space, not CON/PRN/AUX/NUL/COM1-9/LPT1-9); pick another name")
    return run


def check_path(path, field: str = "output_dir", what: str | None = None) -> str:
    """``path`` if it is a usable path string (length per component and in all, no control
    characters, no URL-encoded separators); else ValueError naming ``field``."""
    what = what or "the path"
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{field}: must be a non-empty path")
    bad = _controls(path)
    if bad:
        raise ValueError(f"{field}: {_show(path)} contains control characters ({', '.join(map(repr, sorted(set(bad))))}); "
                         "give the folder's path as the file system shows it")
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > PATH_MAX:
        raise ValueError(f"{field}: {what} is {size} bytes long, over the {PATH_MAX}-byte path limit; use a shorter "
                         "path" + (" or run name" if field == "run" else ""))
    for part in re.split(r"[/\\]", path):
        n = len(part.encode("utf-8", "surrogatepass"))
        if n > NAME_MAX:
            raise ValueError(f"{field}: {what} has a {n}-byte component ({_show(part, 40)}), over the {NAME_MAX}-byte "
                             "limit for one file or folder name; use a shorter name")
    if _ENCODED.search(path):
        raise ValueError(f"{field}: {_show(path)} looks URL-encoded ('%2e', '%2f', '%5c' or '%00'); give the plain path")
    folded = unicodedata.normalize("NFKC", path)
    if folded != path and ".." in re.split(r"[/\\]", folded):
        raise ValueError(f"{field}: {_show(path)} holds look-alike Unicode for '..'; give the plain path")
    return path


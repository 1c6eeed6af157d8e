"""scripts/setup.sh picks the newest ComfyUI tree by version, and unpacks trees into the cache, never in place."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def setup_fn(call: str, hosts: Path, cache: Path) -> subprocess.CompletedProcess:
    """Run one function of scripts/setup.sh (sourced, so main does not run)."""
    env = {**os.environ, "SD35WB_HOSTS_DIR": str(hosts), "SD35WB_CACHE": str(cache)}
    return subprocess.run(["bash", "-c", f'source scripts/setup.sh && {call}'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def comfy_tarball(path: Path, version: str, top: str = "ComfyUI") -> Path:
    files = {"main.py": "print('comfy')\n", "comfy/__init__.py": "",
             "comfyui_version.py": f'# generated\n__version__ = "{version}"\n'}
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def hosts(tmp_path) -> Path:
    d = tmp_path / "hosts"
    d.mkdir()
    comfy_tarball(d / "comfyui-0.9.0.tar.gz", "0.9.0")
    comfy_tarball(d / "comfyui-0.10.0.tar.gz", "0.10.0")
    tree = d / "ComfyUI-0.9.5"
    (tree / "comfy").mkdir(parents=True)
    (tree / "main.py").write_text("")
    (tree / "comfyui_version.py").write_text('__version__ = "0.9.5"\n')
    (d / "README.md").write_text("not a tree")
    return d


def test_newest_is_the_highest_version_not_the_last_name(hosts, tmp_path):
    r = setup_fn("resolve_host newest", hosts, tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == hosts / "comfyui-0.10.0.tar.gz"  # as text, 0.9.x would sort last


def test_a_version_picks_its_tree_and_an_unknown_one_says_what_exists(hosts, tmp_path):
    r = setup_fn("resolve_host 0.9.5", hosts, tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == hosts / "ComfyUI-0.9.5"
    r = setup_fn("resolve_host 0.99.0", hosts, tmp_path / "cache")
    assert r.returncode != 0
    assert "no ComfyUI 0.99.0 in" in r.stderr and str(hosts) in r.stderr and "newest" in r.stderr


def test_no_hosts_folder_means_the_pinned_host_only(tmp_path):
    r = setup_fn('[ -z "$(host_trees)" ] && echo none', tmp_path / "absent", tmp_path / "cache")
    assert r.stdout.strip() == "none", r.stderr
    r = setup_fn("resolve_host newest", tmp_path / "absent", tmp_path / "cache")
    assert r.returncode != 0 and "no ComfyUI tree or tarball in" in r.stderr


def test_a_read_only_tarball_is_unpacked_into_the_cache_keyed_by_its_sha256(hosts, tmp_path):
    tarball = hosts / "comfyui-0.10.0.tar.gz"
    before = tarball.read_bytes()
    for p in (tarball, hosts):  # CI's ../shared is read-only
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        dest = tmp_path / "cache" / "host" / "ComfyUI"
        dest.parent.mkdir(parents=True)
        r = setup_fn(f'tree_sha "{tarball}" && tree_version "{tarball}" && copy_tree "{tarball}" "{dest}"', hosts,
                     tmp_path / "cache")
        assert r.returncode == 0, r.stderr
        sha, version = r.stdout.split()[:2]
        assert sha == hashlib.sha256(before).hexdigest() and version == "0.10.0"
        assert (dest / "main.py").is_file() and (dest / "comfyui_version.py").is_file()
        assert sorted(p.name for p in hosts.iterdir()) == ["ComfyUI-0.9.5", "README.md", "comfyui-0.10.0.tar.gz",
                                                           "comfyui-0.9.0.tar.gz"]
        assert tarball.read_bytes() == before
        assert not list(dest.parent.glob(".unpack-*"))  # the temporary folder is gone
    finally:
        hosts.chmod(0o755)


def test_a_tree_that_is_not_comfyui_is_refused_with_its_path(tmp_path):
    bogus = tmp_path / "hosts" / "bogus.tar.gz"
    bogus.parent.mkdir()
    with tarfile.open(bogus, "w:gz") as tf:
        info = tarfile.TarInfo("x/readme.txt")
        tf.addfile(info, io.BytesIO(b""))
    r = setup_fn(f'tree_version "{bogus}"', bogus.parent, tmp_path / "cache")
    assert r.returncode != 0 and str(bogus) in r.stderr and "not a ComfyUI tree" in r.stderr


def test_choice_labels_name_the_env_files(tmp_path):
    r = setup_fn('host_env_file ""; host_env_file 0.3.75; host_env_file newest; frontend_env_file newest; '
                 f'host_env_file "{tmp_path}/ComfyUI.tar.gz"', tmp_path, tmp_path / "cache")
    lines = [Path(x).name for x in r.stdout.split()]
    assert lines[:4] == [".host.env", ".host.env", ".host.newest.env", ".frontend.newest.env"], r.stderr
    assert lines[4].startswith(".host.path-") and lines[4].endswith(".env")


def _main_steps(*args: str) -> str:
    """scripts/setup.sh's main with its host and chromium steps replaced by markers: which steps run for these
    arguments (the argument handling is what is tested; building a host is the host tiers' business)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "COMFYUI_DIR", "COMFYUI_PYTHON")}
    r = subprocess.run(["bash", "-c", 'source scripts/setup.sh && setup_host() { echo "host:$1"; } && '
                        'ensure_chromium() { echo chromium; } && main "$@"', "setup.sh", *args],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_chromium_is_installed_only_with_browser():
    assert _main_steps().split() == ["host:"]
    assert _main_steps("--browser").split() == ["host:", "chromium"]


def test_make_demo_never_asks_for_the_browser_and_make_test_and_ci_do():
    """`make demo` must not need root for a browser only the browser tests use; `make test` and CI install it."""
    def recipe(target: str) -> list[str]:
        r = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [ln for ln in r.stdout.splitlines() if "scripts/setup.sh" in ln]

    assert recipe("demo") and all("--browser" not in ln for ln in recipe("demo")), recipe("demo")
    assert any("--browser" in ln.split() for ln in recipe("test")), recipe("test")
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.startswith("bash scripts/setup.sh")]
    assert ci and all("--browser" in ln.split() for ln in ci), ci

"""The README a ComfyUI user opens: install first, then a quick start; the harness lives in docs/development.md."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DEV = (REPO / "docs" / "development.md").read_text()


def _headings(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, re.M)


def test_the_first_screen_is_install_then_a_quick_start():
    assert _headings(README)[:2] == ["Install", "Quick start: a first image with each capability"], _headings(README)
    first = README[:README.index("## Quick start")]
    assert "make demo" not in first and "setup.sh" not in first and "sudo" not in first


def test_install_names_every_way_with_the_real_clone_url_and_comfyuis_own_python():
    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    install = README[README.index("## Install"):README.index("## Quick start")]
    assert "ComfyUI-Manager" in install and "comfy node install sd35-workbench" in install
    assert f"git clone {url}" in install
    assert r"python_embeded\python.exe -m pip install -r" in install


def test_the_simpletuner_quick_start_says_how_to_set_the_training_roots():
    quick = README[README.index("## Quick start"):README.index("## Gallery")]
    st = quick[quick.index("### SimpleTuner"):]
    for way in ("SD35WB_TRAINING_ROOTS=/data/training python main.py", "run_nvidia_gpu.bat",
                "Environment=SD35WB_TRAINING_ROOTS=", "ComfyUI Desktop"):
        assert way in st, way


def test_the_token_recipe_gives_a_login_command_for_every_allowed_huggingface_hub():
    floor = re.search(r"^huggingface_hub>=([\d.]+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    quick = README[README.index("### Getting the SD3.5 weights"):]
    assert "hf auth login" in quick  # huggingface_hub 0.34+
    if tuple(int(x) for x in floor.split(".")) < (0, 34):
        assert "huggingface-cli login" in quick, f"huggingface_hub>={floor} allows versions without the hf command"


def test_the_harness_matrix_and_benchmarks_live_in_docs_development():
    assert {"Two commands for a fresh checkout", "Tested hosts", "Benchmarks"} <= set(_headings(DEV))
    assert "## Benchmarks" not in README and "## Tested hosts" not in README
    assert "docs/development.md" in README and "docs/benchmarks.md" in README


def _section(heading_words: tuple[str, ...]) -> str:
    heads = [h for h in _headings(README) if all(w in h for w in heading_words)]
    assert len(heads) == 1, f"README needs one section naming {heading_words}: {_headings(README)}"
    start = README.index(f"## {heads[0]}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _ci_make_commands() -> set[str]:
    """The make commands .ci/run runs: each `leg NAME TARGET ARGS...` runs `make TARGET ARGS...`."""
    text = (REPO / ".ci" / "run").read_text()
    assert 'if make "$target" "$@"' in text, "leg() no longer runs make TARGET ARGS: update this parser"
    cmds = set()
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["leg"] and len(words) >= 3:
            cmds.add(" ".join(["make", *words[2:]]))
    return cmds


def test_readme_names_the_two_developer_commands_what_they_need_and_how_long_they_take():
    dev = _section(("make demo", "make test"))
    shown = {ln.split("#")[0].strip() for ln in re.findall(r"```bash\n(.*?)```", dev, re.S)[0].splitlines()}
    assert {"make demo", "make test"} <= shown, shown
    for cmd in ("make demo", "make test"):
        row = next((ln for ln in dev.splitlines() if ln.startswith(f"| `{cmd}`")), None)
        assert row, f"README's table has no row for {cmd}"
        what, needs, takes = (c.strip() for c in row.strip("|").split("|")[1:4])
        assert what and needs, row
        assert re.search(r"\d+ (s|min)\b", takes), f"{cmd}: how long it takes, with a figure: {takes!r}"
    demo_needs = next(ln for ln in dev.splitlines() if ln.startswith("| `make demo`")).split("|")[3]
    assert "chromium" not in demo_needs.lower() or "no chromium" in demo_needs.lower(), demo_needs
    assert "no root" in demo_needs.lower(), demo_needs


def test_ci_runs_the_test_command_readme_shows():
    assert "make test" in _ci_make_commands(), _ci_make_commands()
    assert "make test" in _section(("make demo", "make test"))


def test_every_relative_link_resolves():
    for path, text in ((REPO / "README.md", README), (REPO / "docs" / "development.md", DEV)):
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target:
                continue
            assert (path.parent / target).exists(), f"{path.name}: link {target} does not exist"


def _comfyignored(rel: str) -> str | None:
    """The .comfyignore pattern (gitignore rules, as `comfy node pack` reads them) that strips `rel`, if any."""
    parts = rel.strip("/").split("/")
    is_dir = (REPO / rel).is_dir()
    for raw in (REPO / ".comfyignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        dir_only, pat = pat.endswith("/"), pat.strip("/")
        anchored = "/" in pat or raw.strip().startswith("/")
        n = pat.count("/") + 1
        # a match on a leading run of components strips everything under it; a dir-only pattern needs a folder there
        starts = [0] if anchored else range(len(parts))
        for i in starts:
            head = parts[i:i + n]
            if len(head) == n and fnmatch.fnmatchcase("/".join(head), pat):
                if not dir_only or i + n < len(parts) or is_dir:
                    return raw.strip()
    return None


def _paths_mentioned(text: str) -> set[str]:
    found = set(re.findall(r"(?<![\w./~-])([\w.-]+(?:/[\w.-]+)+/?)", text))          # a/b/c, docs/x.md, tools/
    found |= {m.replace(".", "/") + ".py" for m in re.findall(r"python[\w.]* -m ([\w.]+)", text)}  # python -m tools.x
    found |= {w for w in re.findall(r"`([\w.-]+)`", text)}                            # `Makefile`, `LICENSE`
    return {p for p in found if not p.startswith("..") and (REPO / p).exists()}


def test_comfyignore_matching_reads_the_patterns_as_the_archive_test_sees_them():
    # what tests/api/test_install_tools.py finds stripped / kept in the real archive
    for stripped in ("tools/comfy_server.py", "tools/", "tests/unit/test_readme.py", "Makefile", "scripts/setup.sh"):
        assert _comfyignored(stripped), stripped
    for kept in ("README.md", "docs/development.md", "workflows/api/sd35_medium_slg.json", "sd35wb/sweep/cli.py"):
        assert _comfyignored(kept) is None, kept


def test_readme_points_users_only_at_files_the_registry_archive_keeps():
    """A Registry / Manager install has no tests/, tools/, scripts/, Makefile (.comfyignore): README must not send
    a user there; the dev-only paths live in docs/development.md."""
    mentioned = _paths_mentioned(README)
    assert {"docs/development.md", "workflows/api/sd35_medium_slg.json"} <= mentioned, sorted(mentioned)
    stripped = {p: _comfyignored(p) for p in sorted(mentioned) if _comfyignored(p)}
    assert not stripped, f"README names paths .comfyignore strips from the Registry archive: {stripped}"

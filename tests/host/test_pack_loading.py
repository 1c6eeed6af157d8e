"""A capability that cannot import (a missing optional dependency, say) disables only its own nodes,
with one clear log line; the rest of the pack loads and the host starts."""

import logging
import shutil

from conftest import REPO, run_async


def test_broken_capability_disables_only_itself(host, tmp_path, caplog):
    pack = tmp_path / "sd35-workbench-copy"
    shutil.copytree(REPO, pack, ignore=shutil.ignore_patterns(".git", ".host*", "tests", "out", "test-artifacts", "__pycache__"))
    (pack / "nodes" / "needs_missing_dep.py").write_text("import sd35wb_no_such_dependency  # noqa\nNODES = []\n")
    saved = dict(host.nodes.NODE_CLASS_MAPPINGS), dict(host.nodes.NODE_DISPLAY_NAME_MAPPINGS)
    ours = {k for k in saved[0] if k.startswith("SD35WB_")}
    try:
        with caplog.at_level(logging.WARNING):
            assert run_async(host.nodes.load_custom_node(str(pack)))
        after = {k for k in host.nodes.NODE_CLASS_MAPPINGS if k.startswith("SD35WB_")}
    finally:  # later tests use the real pack's classes
        for mapping, old in zip((host.nodes.NODE_CLASS_MAPPINGS, host.nodes.NODE_DISPLAY_NAME_MAPPINGS), saved):
            mapping.clear()
            mapping.update(old)
    lines = [r.getMessage() for r in caplog.records if "needs_missing_dep" in r.getMessage()]
    assert len(lines) == 1 and "nodes disabled" in lines[0] and "sd35wb_no_such_dependency" in lines[0]
    assert after == ours, "every other capability's nodes still load"

"""Host tier: README's node table (and docs/schedulers.md's) says what the nodes' schemas say.

A user picks a node by the name README gives and sets it from the defaults README lists; both are
read here from the real host's mappings (display names, INPUT_TYPES as the frontend receives it).
The row convention (docs/development.md, "README's node table"):

- a row starts ``| **<display name>** `<node id>` |``, the display name exactly as the node search shows it;
- in the row's last cell (key inputs) a backticked input name followed by a space and a value claims
  that input's default: a quoted string ("7,8,9 \\| 6"), or one word or number (``auto``, ``1.0``,
  ``t5xxl_fp16.safetensors``). A word matches a combo default equal to it or starting with it plus
  " (" (``comfyui`` for "comfyui (4518.76)"); on / off match booleans. Anything else after the name
  (``(``, ``/``, ``,``) is no claim; backticked words that are not inputs of that node, and sockets
  (inputs with no default: ``model``, ``settings``), are prose.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\|\s*\*\*(?P<name>[^*]+)\*\*\s*`(?P<id>SD35WB_\w+)`\s*\|")
CLAIM = re.compile(r"`(?P<input>\w+)` (?P<value>\"(?:[^\"\\]|\\.)*\"|-?[\w.]+)")


def _rows(text: str) -> list[tuple[str, str, str]]:
    """(display name, node id, last cell) of each node row; ``\\|`` inside a cell is not a cell border."""
    rows = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
            rows.append((m["name"].strip(), m["id"], cells[-1]))
    return rows


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else None]


def _defaults(cls) -> dict[str, object]:
    """Input name -> schema default, for the inputs that have one (widgets, not sockets)."""
    out = {}
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if "default" in opts:
                out[name] = opts["default"]
    return out



def _same(claim: str, default) -> bool:
    if claim.startswith('"'):
        claim = claim[1:-1].replace("\\|", "|").replace('\\"', '"')
    else:
        claim = claim.rstrip(".")  # a claim that ends a sentence
    if isinstance(default, bool):
        return claim.lower() in (("on", "true") if default else ("off", "false"))
    if isinstance(default, (int, float)):
        try:
            return float(claim) == float(default)
        except ValueError:
            return False
    return claim == str(default) or str(default).startswith(claim + " (")


def _problems(host, doc: str, rows) -> list[str]:
    classes = host.nodes.NODE_CLASS_MAPPINGS
    display = host.nodes.NODE_DISPLAY_NAME_MAPPINGS
    out = []
    for name, node_id, cell in rows:
        if node_id not in classes:
            out.append(f"{doc}: row for {node_id}, which the pack does not register (renamed or removed?)")
            continue
        if name != display.get(node_id, node_id):
            out.append(f"{doc}: {node_id} is shown as {display.get(node_id)!r}, the row says {name!r}")
        defaults = _defaults(classes[node_id])
        for m in CLAIM.finditer(cell):
            inp, value = m["input"], m["value"]
            if inp in defaults and not _same(value, defaults[inp]):
                out.append(f"{doc}: {node_id}.{inp} has default {defaults[inp]!r}, the row says `{inp}` {value}")
    return out


def test_readme_node_table_names_every_node_as_the_host_shows_it(host):
    rows = _rows(_section((REPO / "README.md").read_text(encoding="utf-8"), "## Nodes"))
    ours = sorted(k for k in host.nodes.NODE_CLASS_MAPPINGS if k.startswith("SD35WB_"))
    ids = [r[1] for r in rows]
    missing = [k for k in ours if k not in ids]
    twice = sorted({k for k in ids if ids.count(k) > 1})
    problems = _problems(host, "README.md", rows)
    problems += [f"README.md: no row for {k} (add `| **{host.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(k, k)}** `{k}` | ... |`)"
                 for k in missing]
    problems += [f"README.md: {k} has more than one row" for k in twice]
    assert not problems, "README's node table disagrees with the nodes (see docs/development.md):\n" + "\n".join(problems)


def test_schedulers_doc_table_agrees_with_the_nodes(host):
    rows = _rows((REPO / "docs" / "schedulers.md").read_text(encoding="utf-8"))
    assert len(rows) >= 6, "docs/schedulers.md lost its node table (or its rows no longer start | **name** `id` |)"
    problems = _problems(host, "docs/schedulers.md", rows)
    assert not problems, "\n".join(problems)


def test_a_wrong_claim_is_caught(host):
    # The parser itself: a row with a stale name and a wrong default must be reported, a right one must not.
    bad = "| **High-Sigma Scheduler** `SD35WB_HighSigmaScheduler` | x | `steps` 31; `shape` karras; `rule` area |"
    good = ("| **High-Sigma Scheduler (resolution-scaled)** `SD35WB_HighSigmaScheduler` | x | `steps` 30, `shape` "
            'karras (Karras), `only_scale_up` on, `rule` "novelai_linear", `width` 1024. `model` any |')
    found = _problems(host, "t", _rows(bad))
    assert len(found) == 3 and "'High-Sigma Scheduler (resolution-scaled)'" in found[0], found
    assert "steps has default 30" in found[1] and "rule has default 'novelai_linear'" in found[2], found
    assert _problems(host, "t", _rows(good)) == []

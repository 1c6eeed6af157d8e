"""Test helper, never imported by the pack: run ``python -m sd35wb.link`` with a fault at step k.

    python tests/fault_sync.py K raise|kill -- <sd35wb.link arguments>

Replaces ``sd35wb.linker._step`` (a no-op between the steps of a sync) in this process only:
at its K-th call it raises RuntimeError ("raise") or sends itself SIGKILL ("kill", like
``kill -9``). Exit 0 with "FAULT NOT REACHED" on stdout when the sync has fewer than K steps.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd35wb import link, linker  # noqa: E402


def main() -> int:
    k, mode = int(sys.argv[1]), sys.argv[2]
    args = sys.argv[sys.argv.index("--") + 1:]
    calls = []

    def step(name: str) -> None:
        calls.append(name)
        if len(calls) == k:
            print(f"FAULT {mode} at step {k} ({name})", flush=True)
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault at step {k} ({name})")

    linker._step = step
    rc = link.main(args)
    print(f"FAULT NOT REACHED after {len(calls)} steps", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())

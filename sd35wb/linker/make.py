"""Make one link under a temporary name: symlink, else hard link, a copy when asked, a merge of shards."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from .. import shards, simpletuner
from .identity import _src_sig
from .paths import _GONE


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.sd35wb-tmp-{os.getpid()}-{os.urandom(4).hex()}")


_NO_SYMLINK = {errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_NO_HARDLINK = _NO_SYMLINK | {errno.EXDEV, errno.EMLINK}


class _CannotLink(Exception):
    pass


def _make(art: simpletuner.Artifact, tmp: Path, copy: bool) -> tuple[str, dict, int]:
    """Create ``tmp`` for ``art``; return (mode, extra record fields, bytes written)."""
    src = art.source
    if art.sharded:
        sig = shards.shard_signature(src)
        res = shards.merge_shards(src, tmp, work=tmp)
        return "merged", {"sig": sig}, res.bytes_written
    if copy:
        sig = _src_sig(src)
        shutil.copyfile(src, tmp)
        return "copy", {"sig": sig}, tmp.stat().st_size
    if not src.exists():  # rotated away since the scan: a link to nothing would show in the lists
        raise _CannotLink(_GONE)
    target = str(src.resolve())
    try:
        os.symlink(target, tmp)
        return "symlink", {}, 0
    except NotImplementedError:
        pass
    except OSError as e:
        # Windows without the symlink privilege: WinError 1314, which Python maps to no errno above.
        if e.errno not in _NO_SYMLINK and getattr(e, "winerror", None) is None:
            raise
    try:
        os.link(target, tmp)
    except OSError as e:
        if e.errno in _NO_HARDLINK:
            raise _CannotLink(f"symlinks are not allowed here and a hard link failed ({e.strerror}): "
                              "sync with copy enabled (--copy) to copy the file instead") from e
        raise
    return "hardlink", {}, 0

"""Temporary sibling folders for atomic writes (checkpoints, the parse cache), and their cleanup.

`make_temp_dir(parent, prefix, label)` creates `<prefix><label>@<host>.<pid>.<random>` with
`os.mkdir`, so the
folder gets the ordinary permissions of the umask (tempfile.mkdtemp makes it 0700, and a
serving account could not read the renamed result). The name records who writes it, so
`remove_stale(parent, prefix)` can tell a killed writer's leftover from a live one:
- same host, and the process is gone -> stale at once;
- otherwise (another host, or a name without an owner) -> stale when nothing in it changed for
  STALE_SECONDS (a live writer touches its files as it writes).
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

STALE_SECONDS = 3600.0


def _host() -> str:
    # '.' separates the name's fields, so it may not occur inside the host part
    return socket.gethostname().replace(".", "-") or "host"


def make_temp_dir(parent: Path, prefix: str, label: str = "") -> Path:
    """A new empty folder `parent/<prefix><label>@<host>.<pid>.<random>`, mode 0777 & ~umask."""
    parent = Path(parent)
    for _ in range(100):
        path = parent / f"{prefix}{label}@{_host()}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: could not create a temporary folder {prefix}*")


def _owner(name: str) -> tuple[str, int] | None:
    """(host, pid) from a make_temp_dir name; None for other names (older versions' mkdtemp)."""
    parts = name.rpartition("@")[2].split(".") if "@" in name else []
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _newest_change(path: Path) -> float:
    newest = path.stat().st_mtime
    for p in path.rglob("*"):
        try:
            newest = max(newest, p.stat().st_mtime)
        except OSError:
            continue
    return newest


def is_stale(path: Path, now: float | None = None) -> bool:
    owner = _owner(path.name)
    if owner and owner[0] == _host():
        return owner[1] != os.getpid() and not _alive(owner[1])
    now = time.time() if now is None else now
    return now - _newest_change(path) > STALE_SECONDS


def remove_stale(parent: Path, prefix: str, legacy: re.Pattern | None = None) -> int:
    """Delete the stale `prefix*` folders in `parent` (see the module docstring), and those whose
    name matches `legacy` (an older version's temporary names); -> how many."""
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    removed = 0
    for path in parent.iterdir():
        ours = path.name.startswith(prefix) or (legacy is not None and legacy.match(path.name))
        try:
            if ours and path.is_dir() and is_stale(path):
                shutil.rmtree(path)
                removed += 1
        except OSError as e:  # vanished meanwhile, or not ours to delete: leave it
            log.debug("could not remove %s: %s", path, e)
    if removed:
        log.info("removed %d leftover temporary folders %s* in %s", removed, prefix, parent)
    return removed

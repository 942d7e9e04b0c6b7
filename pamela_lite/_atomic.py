"""Atomic writes: a crash or an error mid-write never leaves a half-written file or model dir."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError

log = logging.getLogger("pamela_lite")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _respect_umask(path: Path, directory: bool) -> None:
    # mkstemp/mkdtemp create 0600/0700 whatever the umask; the finished file or folder should
    # have the permissions any other new file of this user gets.
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + suffix)
    os.close(fd)
    tmp = Path(tmp)
    _respect_umask(tmp, directory=False)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_replaceable(path: str | Path, marker: str, kind: str) -> None:
    """Refuse an output folder that would destroy something else (one InputError).

    `path` may be absent, an empty folder, or a folder this kind of output wrote before (it
    holds `marker`); a file, or a folder of other things, is never replaced.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise InputError(path, f"exists and is not a folder; choose another output for the {kind}")
    if any(path.iterdir()) and not (path / marker).exists():
        raise InputError(path, f"holds other files and is not a {kind} folder (no {marker}); "
                               "choose another output folder, or empty this one")


@contextlib.contextmanager
def atomic_dir(path: str | Path, marker: str, kind: str) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it takes the place of `path`.

    An existing `path` is kept until the new directory is complete, then swapped in one step
    (:func:`_exchange`; two renames where the system lacks it), so readers see either the old
    model or the new one, never a mixture. Only an output of the same kind (a folder holding
    `marker`) is replaced: see :func:`check_replaceable`.
    """
    path = Path(path)
    check_replaceable(path, marker, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    _warn_leftovers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    _respect_umask(tmp, directory=True)
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):  # the old folder is now at tmp, removed below
            # Two renames: a kill between them leaves no folder at `path` (the old one is kept
            # in a hidden .old folder beside it), which is why the one-step exchange comes first.
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _warn_leftovers(path: Path) -> None:
    """Name the hidden folders an interrupted write of `path` left beside it (a kill -9 or a power
    cut skips the clean-up): nothing reads them, and a fit's may hold hundreds of megabytes. They
    are not removed here: another process may be writing `path` right now."""
    # mkdtemp's names: ".NAME." + 8 random characters + ".tmp" (or ".old", the two-rename swap's)
    ours = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.(tmp|old)")
    left = sorted(p.name for p in path.parent.glob(f".{glob.escape(path.name)}.*")
                  if p.is_dir() and ours.fullmatch(p.name))
    if left:
        log.warning(f"warning: {path.parent}: {len(left)} folder(s) left by an interrupted write of {path.name} "
                    f"({', '.join(left[:3])}{' ...' if len(left) > 3 else ''}): nothing reads them; delete them "
                    f"once no other run is writing {path.name}")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE): no moment in which
    either is missing. False, having changed nothing, where the system or file system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl before 1.2.5)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE from <fcntl.h> and <linux/fs.h>
    return renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0


def carry_over(old: str | Path, new: Path, exclude: tuple[str, ...] = ()) -> None:
    """Copy into `new` (an atomic_dir's temporary folder) the files of the folder `old` it replaces
    that it does not hold itself, except those named in `exclude` (outputs a run left out must not
    survive from the run before): input files and notes kept beside an output survive its
    replacement (files only; subfolders are not carried over)."""
    old = Path(old)
    if not old.is_dir():
        return
    for item in old.iterdir():
        if item.is_file() and item.name not in exclude and not (new / item.name).exists():
            shutil.copy2(item, new / item.name)


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)

"""File modes: what a new file of ours gets, whatever wrote it (needs nothing but the standard library)."""

from __future__ import annotations

import os
from pathlib import Path


def file_mode() -> int:
    """The mode a new file gets under the user's umask (``mkstemp`` and safetensors make theirs 0600 whatever
    the umask)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask: read from ``/proc/self/status`` (Linux 4.7+), else by setting it and putting it back
    (which, for that instant, would give a file another thread creates the mode 0666)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def follow_umask(path: Path) -> None:
    """Give a file we just wrote the mode the user's umask gives new files."""
    os.chmod(path, file_mode())

"""File modes: what a new file of ours gets, whatever wrote it (needs nothing but the standard library)."""

from __future__ import annotations

import os
from pathlib import Path


def file_mode() -> int:
    """The mode a new file gets under the user's umask (``mkstemp`` and safetensors make theirs 0600 whatever
    the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def follow_umask(path: Path) -> None:
    """Give a file we just wrote the mode the user's umask gives new files."""
    os.chmod(path, file_mode())

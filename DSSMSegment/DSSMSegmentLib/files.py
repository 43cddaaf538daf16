"""Files a command writes: what a new file of ours gets, whatever wrote it, and the checks made before any work on
the outputs of ``dssm segment`` and ``dssm evaluate`` (needs nothing but the standard library)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from .errors import DSSMError


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


def refuse_unsafe_outputs(targets: dict, protected: set, overwrite: bool) -> None:
    """Before any work: no output may be an input file, two inputs may not share an output, and an existing
    output is replaced only with ``--overwrite``. ``targets`` maps each output path to the input it is for."""
    existing = []
    for target, source in targets.items():
        if target.resolve() in protected:
            raise DSSMError(f"writing {target} would replace the input {source} (-o is the input's own folder and "
                            "the mask has the same name); choose another output folder with -o")
        if target.exists() and not overwrite:
            existing.append(target)
    if existing:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        verb = "already exists" if len(existing) == 1 else "already exist"
        raise DSSMError(f"{', '.join(map(str, existing[:3]))}{more} {verb}; pass --overwrite to replace, or choose "
                        "another output folder with -o")


def check_writable(out_dir: Path, file: Optional[Path] = None) -> None:
    """Create the output folder ``-o`` names (or the folder of ``file``, e.g. ``--timings``'s) and try a file in it,
    before the model loads: a folder that cannot be written (no permission, a read-only disk, a file on the way) is
    said once, not after each input's work. Missing folders are created with their missing parents, for ``-o`` and
    ``--timings`` alike; each one created that the option does not itself name (a parent of ``-o``, the folder of
    ``--timings``) gets a note, so that a mistyped path is seen at once."""
    import tempfile

    try:
        missing = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise DSSMError(f"cannot write into {out_dir}: {exc.strerror or exc}; choose another folder") from None
    created = missing if file is not None else missing[1:]
    if created:
        option = f"--timings {file}" if file is not None else f"-o {out_dir}"
        print(f"dssm: note: created the missing folder{'s' if len(created) > 1 else ''} "
              f"{', '.join(map(str, reversed(created)))} for {option}", file=sys.stderr)

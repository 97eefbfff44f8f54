"""Reading and writing checkpoint files safely: errors that name the file, writes that never leave half a file."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def read_torch_file(path: str | Path, kind: str) -> Any:
    """``torch.load`` (tensors only, onto the CPU) with errors naming ``kind`` and the path.

    ``weights_only=True`` everywhere: a checkpoint is data, and unpickling one must never run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{kind} {path} is not a readable PyTorch checkpoint: {_reason(error)}") from error


def _reason(error: Exception) -> str:
    """One line of torch's (multi-paragraph) load error: the unpickler's complaint when there is one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    unpickler = [line for line in lines if "WeightsUnpickler error" in line]
    if unpickler:
        return f"{unpickler[0]} (loaded with weights_only=True: tensors and plain containers only)"
    return lines[0] if lines else type(error).__name__


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the checkpoint the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(error):
            raise OSError(
                errno.ENOSPC,
                f"{path}: no space left on device while writing it (the previous file is intact)",
            ) from error
        raise


def _is_disk_full(error: BaseException) -> bool:
    """torch.save reports ENOSPC as an OSError or as a RuntimeError of its zip writer; look at the chain."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

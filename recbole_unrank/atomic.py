"""Atomic file writes: the package's one way to write a file.

A leaf (imports nothing of the package) so that every layer may use it. ``write(tmp)`` fills
a temporary file beside the target, which is then renamed onto it: a crash leaves the old file
or the new one, never half of one.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

__all__ = ["atomic_write", "atomic_text", "atomic_torch_save"]


def atomic_write(path: str, write: Callable[[str], Any]) -> str:
    """``write(tmp)`` fills a temporary file beside ``path``, which is then renamed onto
    ``path``. On any failure the temporary file is removed and ``path`` is left as it was."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_text(path: str, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_torch_save(obj, path: str) -> str:
    """``torch.save(obj)`` to ``path`` atomically (pickle protocol 4, as RecBole's trainer)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp, pickle_protocol=4))

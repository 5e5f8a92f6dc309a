"""Progress bars on the long loops of the methods, as RecBole shows them on training.

RecBole draws ``tqdm(..., ncols=100, desc=set_color(..., "pink"))`` when ``show_progress`` is
set; the methods do the same on their own loops (shards trained, fine-tuning epochs, CG
iterations, Newton re-fits, the step calibration's bisection), with ``show_progress`` handed to
them on :class:`~recbole_unrank.methods.base.UnlearnTask`. A bar is drawn only when it is asked
for *and* stderr is a terminal: logs and pipes get no bar.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from recbole.utils import set_color
from tqdm import tqdm

__all__ = ["progress", "bars_shown"]


def bars_shown(show_progress: bool) -> bool:
    """Whether a bar is drawn: ``show_progress`` and stderr is a terminal."""
    stream = sys.stderr
    return bool(show_progress) and bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str,
             show_progress: bool = False) -> tqdm:
    """A RecBole-style bar over ``iterable`` (or a manual one: ``total`` and ``.update()``),
    silent (``tqdm(disable=True)``: iterates, updates, closes, draws nothing) unless
    :func:`bars_shown`."""
    return tqdm(iterable, total=total, ncols=100, desc=set_color(desc, "pink"), file=sys.stderr,
                disable=not bars_shown(show_progress))

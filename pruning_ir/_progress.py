"""Opt-in progress bars: ``tqdm`` when asked for and installed, otherwise nothing."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def progress_bar(enabled: bool, desc: str, total: int | None = None) -> Any:
    """A ``tqdm`` bar, or ``None`` when ``enabled`` is false or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        log.warning("progress=True needs tqdm (pip install tqdm); continuing without a progress bar")
        return None
    return tqdm(total=total, desc=desc, unit="batch")

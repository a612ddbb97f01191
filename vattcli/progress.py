"""Small pieces every long job's progress lines share (design.md, Progress)."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """``215`` -> ``3m35s``; ``4000`` -> ``1h06m``; not finite -> ``?``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

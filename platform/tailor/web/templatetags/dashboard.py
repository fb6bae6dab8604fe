"""Template filters of the dashboard: durations, progress, throughput."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def duration(seconds: Any) -> str:
    """`42 s`, `7 min`, `1 h 05 min`; empty for a missing value."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


@register.filter
def percent(step: Any, total: Any) -> int:
    """How far `step` is through `total`, 0-100."""
    if not isinstance(step, int) or not isinstance(total, int) or total <= 0:
        return 0
    return max(0, min(100, step * 100 // total))


@register.filter
def rate(value: Any) -> str:
    """A throughput figure with its thousands grouped: `1,234`."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    return f"{value:,.0f}"

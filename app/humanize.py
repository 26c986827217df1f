"""How sizes read in messages, reports and charts: one formatter for the whole app."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB', 2097152 -> '2 MB' (powers of 1024, as file managers show them)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            if unit == "bytes" or round(n, 1) == int(n):
                return f"{n:,.0f} {unit}"
            return f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")

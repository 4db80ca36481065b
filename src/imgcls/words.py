"""How imgcls says the few things it says in many places: a list cut short, an exception's
first line, a duration, a count of things. Standard library only."""

from __future__ import annotations


def few(items, n: int = 4) -> str:
    """'a, b, c and 5 more': the first n items, and how many were left out."""
    items = [str(x) for x in items]
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line (its type's name where it says nothing), cut to `limit`."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def duration(seconds: float) -> str:
    """'about 12 min', 'about 1.7 h', 'under a minute': never 'about 0 min'."""
    if seconds < 30:
        return "under a minute"
    return f"about {seconds / 3600:.1f} h" if seconds >= 5400 else f"about {seconds / 60:.0f} min"


def count(n: float, noun: str) -> str:
    """'1 epoch', '2 epochs', '1.5 minutes': the noun's plural (an added s) unless n is 1."""
    return f"{n:g} {noun}" if n == 1 else f"{n:g} {noun}s"

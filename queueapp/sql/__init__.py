"""Loads queries.sql into QUERIES: one entry per ``-- name --`` block."""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def load(text: str) -> dict[str, str]:
    """Split text at ``-- name --`` header lines into {name: statement}."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in queries.sql")
        queries[name] = body.strip().rstrip(";")
    return queries


QUERIES = load((Path(__file__).parent / "queries.sql").read_text())

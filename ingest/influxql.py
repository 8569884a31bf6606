"""InfluxQL quoting, pure: every query this project builds quotes names and values through here."""

from __future__ import annotations


def ident(name: str) -> str:
    """A quoted identifier (measurement, tag, field or retention policy name)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """A quoted string literal (a tag value in a WHERE clause)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

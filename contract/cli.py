"""CLI conventions shared by every lampwatch command (``lampwatch-edge``, ``-gateway``, ``-ingest``,
``-sim``): a user mistake ends in exactly one line on stderr and a non-zero exit code.

The line is written with ``typer.echo``, never through rich: rich wraps at the terminal width, so a
long path in the message would break the line at 80 columns (or 40) and a script reading stderr
would see two. Newlines inside the message (a foreign exception's text) are collapsed for the same
reason.
"""

from __future__ import annotations

import typer


def one_line(text: object) -> str:
    """``text`` as one line: every run of whitespace (newlines included) becomes one space."""
    return " ".join(str(text).split())


def fail(prog: str, exc: object, code: int = 2) -> typer.Exit:
    """Print ``<prog>: error: <exc>`` on one stderr line; return the Exit to raise."""
    typer.echo(f"{prog}: error: {one_line(exc)}", err=True)
    return typer.Exit(code)

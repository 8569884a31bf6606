"""CLI conventions shared by every lampwatch command (``lampwatch-edge``, ``-gateway``, ``-ingest``,
``-sim``): a user mistake ends in exactly one line on stderr and a non-zero exit code.

The line is written with ``typer.echo``, never through rich: rich wraps at the terminal width, so a
long path in the message would break the line at 80 columns (or 40) and a script reading stderr
would see two. Newlines inside the message (a foreign exception's text) are collapsed for the same
reason.

Every CLI also shares three root options, declared here once and put on each app's callback:

    --version                 print ``<prog> <version>`` and exit 0
    --log-level LEVEL         DEBUG | INFO | WARNING | ERROR (default: the command's own, INFO)
    --log-format text|json    json: one JSON object per log line (ts, level, logger, msg[, exc])

and one entry point, :func:`run_app`, that turns click's usage errors (which typer draws as a
five-line rich box) into ``<prog>: error: <message>`` on one line, exit 2. (Typer vendors click:
only typer's public names are used here.)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from contextlib import ContextDecorator
from importlib import metadata
from typing import Annotated, Any, Literal, TextIO

import typer

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def one_line(text: object) -> str:
    """``text`` as one line: every run of whitespace (newlines included) becomes one space."""
    return " ".join(str(text).split())


def fail(prog: str, exc: object, code: int = 2) -> typer.Exit:
    """Print ``<prog>: error: <exc>`` on one stderr line; return the Exit to raise."""
    typer.echo(f"{prog}: error: {one_line(exc)}", err=True)
    return typer.Exit(code)


def version() -> str:
    """The installed lampwatch distribution's version (``0+unknown`` when run from a bare tree)."""
    try:
        return metadata.version("lampwatch")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# --- logging -------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``{"ts": ms, "level", "logger", "msg"[, "exc"]}``; never wraps."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": int(record.created * 1000), "level": record.levelname,
                               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


_configured: dict[str, bool] = {"explicit_level": False}


def configure_logging(level: str | None = None, fmt: str = "text") -> None:
    """Install lampwatch's one root handler (text or JSON lines on stderr), replacing an earlier one.

    ``level=None`` keeps INFO and lets a command apply its own configured level later
    (:func:`apply_default_level`)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level or "INFO")
    _configured["explicit_level"] = level is not None
    logging.Formatter.converter = time.gmtime  # log times in UTC, like every timestamp here


class quiet_logs(ContextDecorator):
    """Raise the named loggers to ``level`` for the duration of a block or a decorated call, then restore
    them: a live view (demo, sim run) keeps its screen clean without silencing the process for good."""

    def __init__(self, *names: str, level: int = logging.ERROR) -> None:
        self.names, self.level = names, level
        self._saved: list[list[int]] = []

    def __enter__(self) -> quiet_logs:
        loggers = [logging.getLogger(n) for n in self.names]
        self._saved.append([lg.level for lg in loggers])  # a stack: the same object may nest
        for lg in loggers:
            lg.setLevel(max(self.level, lg.level))
        return self

    def __exit__(self, *_exc: object) -> None:
        for n, lvl in zip(self.names, self._saved.pop(), strict=True):
            logging.getLogger(n).setLevel(lvl)


def apply_default_level(level: str) -> None:
    """A command's configured level (e.g. the edge config's ``log_level``) unless --log-level was given."""
    if not _configured["explicit_level"]:
        logging.getLogger().setLevel(level)


# --- the shared root options ---------------------------------------------------------------------
def _print_version(ctx: typer.Context, _param: typer.CallbackParam, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(f"{ctx.find_root().info_name or 'lampwatch'} {version()}")
        raise typer.Exit(0)


VersionOpt = Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="print the version and exit")]
LogLevelOpt = Annotated[LogLevel | None, typer.Option("--log-level", case_sensitive=False,
                                                      help="DEBUG, INFO, WARNING or ERROR")]
LogFormatOpt = Annotated[LogFormat, typer.Option("--log-format", help="text, or json: one JSON object per line")]


def root_options(log_level: str | None, log_format: str) -> None:
    """What every app's callback does with the shared options."""
    configure_logging(log_level.upper() if log_level else None, log_format)


# --- the entry point -----------------------------------------------------------------------------
def run_app(app: typer.Typer, prog: str, argv: list[str] | None = None) -> int:
    """Run ``app``; a click usage error becomes one stderr line and exit 2. Returns the exit code."""
    try:
        rv = app(args=argv, prog_name=prog, standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo(f"{prog}: aborted", err=True)
        return 130
    except typer.TyperException as exc:  # click's usage errors: unknown option, bad value, no command
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare command: its help, as click would show it
            ctx = getattr(exc, "ctx", None)
            typer.echo(ctx.get_help() if ctx is not None else str(exc))
            return 2
        fmt = getattr(exc, "format_message", None)
        message = fmt() if callable(fmt) else str(exc)
        typer.echo(f"{prog}: error: {one_line(message)}", err=True)
        return int(getattr(exc, "exit_code", 2))
    return rv if isinstance(rv, int) else 0


def entry_point(app: typer.Typer, prog: str) -> Callable[[], None]:
    """A console-script ``main`` for ``app``."""

    def main() -> None:
        sys.exit(run_app(app, prog))

    return main

"""How every component loads its settings: one loader, one precedence, one error style.

Sources, highest priority first: constructor arguments, ``LAMPWATCH_<COMPONENT>_<FIELD>`` environment
variables (nested fields with ``__``; lists and tables as JSON), then the TOML file. A component's
settings model subclasses :class:`FileSettings` (a pydantic-settings model) and is loaded with
:func:`load_settings`; there is no module-level or class-level mutable state: the parsed file travels
in a ContextVar for exactly the duration of one construction, so two loads in two threads never see
each other's file.

The file is read with :func:`read_toml`: the ``[section]`` table when the file has one (one
``lampwatch.toml`` can hold ``[gateway]`` and ``[ops]``), otherwise the whole file. Every mistake is
reported at once as :class:`ConfigProblems`, whose ``str()`` is one line for a CLI (the first mistake,
``+N more``) and whose :meth:`ConfigProblems.lines` is one line per mistake for a ``check`` command.
Secrets are ``SecretStr`` fields: never printed, never logged.
"""

from __future__ import annotations

import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

from contract.errors import ConfigError

#: the pydantic error type that carries a list of cross-field mistakes found by one model validator
CONFIG_PROBLEMS = "lampwatch_config_problems"

_FILE_DATA: ContextVar[dict[str, Any] | None] = ContextVar("lampwatch_settings_file", default=None)

S = TypeVar("S", bound="FileSettings")


def _int_from_env(v: object) -> object:
    return int(v) if isinstance(v, str) and v.strip().isdigit() else v  # the environment gives "311"


#: the MQTT protocol a client speaks: 5, or 311 for brokers that only speak MQTT 3.1.1 (NATS, amqtt)
MqttVersion = Annotated[Literal[5, 311], BeforeValidator(_int_from_env)]


class FileSettings(BaseSettings):
    """Base of every component's settings: constructor > environment > the TOML file being loaded."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        data = _FILE_DATA.get()
        if data is None:
            return init_settings, env_settings
        return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=data)


class ConfigProblems(ConfigError):
    """Every mistake of one configuration; ``str()`` is one line (the first, +N more)."""

    def __init__(self, problems: list[str], source: Path | None = None, what: str = "configuration") -> None:
        self.problems = problems or [f"invalid {what}"]
        self.source = source
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"invalid {what}: {self.problems[0]}{more}")

    def lines(self) -> list[str]:
        """One line per mistake, prefixed with the file: what ``lampwatch-edge check`` prints."""
        prefix = f"{self.source}: " if self.source is not None else ""
        return [prefix + " ".join(p.split()) for p in self.problems]


def problems_of(exc: ValidationError) -> list[str]:
    """Every error of a validation, each as ``location: message``."""
    out: list[str] = []
    for e in exc.errors(include_url=False, include_input=False):
        if e["type"] == CONFIG_PROBLEMS:
            out += list(e.get("ctx", {}).get("problems", [e["msg"]]))
            continue
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}" if loc else msg)
    return out


def read_toml(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """The parsed file (its ``[section]`` table when it has one); ConfigError with one clear line."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    if section is not None and isinstance(data.get(section), dict):
        return dict(data[section])
    return data


def load_settings(cls: type[S], path: str | Path | None = None, *, section: str | None = None,
                  what: str = "configuration", **overrides: Any) -> S:
    """``cls`` from ``overrides``, the environment and the TOML file at ``path`` (if any); every mistake
    raised together as :class:`ConfigProblems` (``what`` names the component in its one line)."""
    data = read_toml(path, section) if path is not None else None
    token = _FILE_DATA.set(data)
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigProblems(problems_of(exc), Path(path) if path is not None else None, what) from exc
    finally:
        _FILE_DATA.reset(token)

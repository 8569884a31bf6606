"""Validated identifiers: a pole id or district name is valid on construction or raises.

The patterns admit only lower-case letters, digits and ``-`` (a pole id may also use ``_``), start
with a letter or digit and are short. So an id can never carry an MQTT wildcard (``+``, ``#``), a topic
separator (``/``), line-protocol syntax (space, comma, ``=``, quotes, backslash), a path trick
(``..``) or a control character, wherever it is used.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

POLE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DISTRICT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# A gateway's id is its MQTT username and client id (mosquitto.conf: use_username_as_clientid). It may
# also hold a ``.``, which no pole id can: a pole's credentials can then never name a gateway.
GATEWAY_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

PoleIdStr = Annotated[str, StringConstraints(pattern=rf"^{POLE_RE.pattern}$")]
DistrictStr = Annotated[str, StringConstraints(pattern=rf"^{DISTRICT_RE.pattern}$")]


def _full(rx: re.Pattern[str], value: object, what: str) -> str:
    if not isinstance(value, str) or rx.fullmatch(value) is None:
        raise ValueError(f"invalid {what} {value!r}: must match {rx.pattern}")
    return value


class PoleId(str):
    """A pole id such as ``p-000123``; raises ``ValueError`` when invalid."""

    __slots__ = ()

    def __new__(cls, value: object) -> PoleId:
        return super().__new__(cls, _full(POLE_RE, value, "pole id"))


class District(str):
    """A district name such as ``north``; raises ``ValueError`` when invalid."""

    __slots__ = ()

    def __new__(cls, value: object) -> District:
        return super().__new__(cls, _full(DISTRICT_RE, value, "district"))


def is_pole_id(value: object) -> bool:
    return isinstance(value, str) and POLE_RE.fullmatch(value) is not None


def is_gateway_id(value: object) -> bool:
    return isinstance(value, str) and GATEWAY_ID_RE.fullmatch(value) is not None


def is_district(value: object) -> bool:
    return isinstance(value, str) and DISTRICT_RE.fullmatch(value) is not None

"""Broker credentials: Mosquitto ``password_file`` and ``acl_file`` for a fleet, plus the gateway user.

Every pole logs in with its pole id as MQTT username, so one set of ACL ``pattern`` lines (``%u`` =
the username) confines every device to its own topics::

    pattern write lampwatch/v1/+/%u/telemetry     its samples
    pattern write lampwatch/v1/+/%u/status        birth / online / offline (and its Last Will)
    pattern write lampwatch/v1/+/%u/cmd/ack       command results
    pattern read  lampwatch/v1/+/%u/cmd           its commands, nobody else's

Service users hold a ``.``, which no pole id can, so no pole's credentials can name them:

* ``lampwatch.gw-0`` .. ``lampwatch.gw-{N-1}`` (``--gateways N``): one per gateway process. Each reads
  telemetry, status and command results of all poles and writes alerts, commands and the ``_sys``
  branch. The broker makes a client's id its username (``use_username_as_clientid``), so a gateway's
  persistent session is ``lampwatch.gw-K`` and nothing else can log in as it.
* ``lampwatch.ops``: operators' tools (``lampwatch-gateway status``, the operators' CLI). Reads
  everything under ``lampwatch/v1/``, writes only commands (``lampwatch/v1/+/+/cmd``) and
  ``lampwatch/v1/_sys/ops/#``. One client at a time: two logins as ``lampwatch.ops`` share one client
  id, so the second disconnects the first.

One pole at a time (:func:`provision`): ``add``, ``remove`` and ``rotate`` rewrite ``passwd`` and
``secrets.csv`` and keep every other line byte for byte; every file is replaced atomically (temp
file, fsync, rename; mode and, as root, owner kept). The ACL needs no change: its ``pattern`` lines
cover any pole. Mosquitto 2.0 rereads passwd and acl on SIGHUP; connections already open are kept.

Passwords are random (``secrets``), hashed the way ``mosquitto_passwd`` 2.0 does: ``$7$`` =
PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, base64 salt and 64-byte hash. When the
``mosquitto_passwd`` binary is present it does the hashing (``-U`` on a plaintext file), else this
module does, byte-compatible. Files: ``passwd`` and ``secrets.csv`` (the plaintext, for provisioning
devices) are written 0600; ``acl`` 0644. Existing files are never overwritten unless asked to:
new passwords would lock every deployed device out.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import hashlib
import io
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contract import topics
from contract.errors import ConfigError
from contract.ids import PoleId

GATEWAY_PREFIX = "lampwatch.gw-"
GATEWAY_USER = f"{GATEWAY_PREFIX}0"
OPS_USER = "lampwatch.ops"
PBKDF2_ITERATIONS = 101  # mosquitto_passwd 2.0's default
SALT_BYTES = 12
Hasher = Literal["auto", "python", "mosquitto_passwd"]
Action = Literal["add", "remove", "rotate"]
ACTIONS: tuple[Action, ...] = ("add", "remove", "rotate")


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A mosquitto 2.0 ``$7$`` password hash."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        want = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return secrets.compare_digest(want, got)


def pole_ids(count: int, prefix: str = "p-") -> list[str]:
    """``p-000000`` .. ``p-{count-1}``: the ids the simulator uses for a fleet of ``count`` poles."""
    if count < 1:
        raise ConfigError("--poles must be at least 1")
    return [str(PoleId(f"{prefix}{i:06d}")) for i in range(count)]


def read_pole_ids(lines: Iterable[str]) -> list[str]:
    """Pole ids, one a line (blank lines and ``#`` comments skipped); invalid or duplicate -> ConfigError."""
    out: list[str] = []
    seen: set[str] = set()
    for n, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            pole = str(PoleId(line))
        except ValueError as exc:
            raise ConfigError(f"line {n}: {exc}") from exc
        if pole in seen:
            raise ConfigError(f"line {n}: duplicate pole id {pole!r}")
        seen.add(pole)
        out.append(pole)
    if not out:
        raise ConfigError("no pole ids given")
    return out


def gateway_users(count: int = 1) -> list[str]:
    """``lampwatch.gw-0`` .. ``lampwatch.gw-{count-1}``: one MQTT user per gateway process."""
    if count < 1:
        raise ConfigError("--gateways must be at least 1")
    return [f"{GATEWAY_PREFIX}{i}" for i in range(count)]


def acl_text(gateways: Sequence[str] = (GATEWAY_USER,), ops_user: str = OPS_USER) -> str:
    root, sys_ = topics.ROOT, topics.SYS
    gateway_blocks = "".join(f"""
user {gw}
topic read {root}/+/+/telemetry
topic read {root}/+/+/status
topic read {root}/+/+/cmd/ack
topic readwrite {root}/+/+/alert/+
topic write {root}/+/+/cmd
topic readwrite {sys_}/#
""" for gw in gateways)
    return f"""\
# Mosquitto ACL for lampwatch, generated by `lampwatch-ingest credentials`.
# Devices: the MQTT username is the pole id (%u). A device writes only its own telemetry, status and
# command results and reads only its own commands. The district level is '+': a device can choose
# the district segment of its topics, never the pole id, which is unique fleet-wide.
pattern write {root}/+/%u/telemetry
pattern write {root}/+/%u/status
pattern write {root}/+/%u/cmd/ack
pattern read {root}/+/%u/cmd

# Gateways, one user each: read what every pole sends, publish alerts, commands and the _sys branch.
{gateway_blocks}
# Operators (lampwatch-gateway status, the operators' CLI): read everything, send commands, write
# only their own _sys/ops branch. Never log in as a gateway user: its client id is its username,
# so that login would take the gateway's session over.
user {ops_user}
topic read {root}/#
topic read {sys_}/#
topic write {root}/+/+/cmd
topic write {sys_}/ops/#
"""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def atomic_write(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` all at once: temp file in the same directory, fsync, rename,
    fsync of the directory. A reader (the broker on SIGHUP) sees the old file or the new one, never
    half of one. As root, the owner of the file it replaces is kept (the broker may run as
    ``mosquitto`` and must still read it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if old is not None and os.geteuid() == 0:
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def passwd_text(users: Mapping[str, str], hasher: Hasher = "auto", workdir: Path | None = None) -> str:
    """The password file for ``users`` (username -> plaintext password)."""
    binary = shutil.which("mosquitto_passwd")
    if hasher == "mosquitto_passwd" and binary is None:
        raise ConfigError("mosquitto_passwd is not installed (apt-get install mosquitto-clients)")
    if hasher == "python" or binary is None:
        return "".join(f"{u}:{hash_password(p)}\n" for u, p in users.items())
    if workdir is None:
        raise ConfigError("mosquitto_passwd needs a private working directory")
    plain = workdir / ".passwd.plain"
    try:
        _write_private(plain, "".join(f"{u}:{p}\n" for u, p in users.items()))
        proc = subprocess.run([binary, "-U", str(plain)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ConfigError(f"mosquitto_passwd -U failed: {(proc.stderr or proc.stdout).strip()[:300]}")
        return plain.read_text(encoding="utf-8")
    finally:
        plain.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Written:
    passwd: Path
    acl: Path
    secrets: Path
    gateway_user: str
    gateway_password: str
    devices: int
    service_users: dict[str, str]  # gateways and the operators' user -> plaintext password


FILES = ("passwd", "acl", "secrets.csv")


def _secrets_text(users: Mapping[str, str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["username", "password"])
    writer.writerows(users.items())
    return buf.getvalue()


def write_credentials(out_dir: str | Path, poles: Sequence[str], *, gateways: int = 1,
                      hasher: Hasher = "auto", force: bool = False) -> Written:
    """Generate a password per pole, per gateway and for the operators' user; write ``passwd``,
    ``acl`` and ``secrets.csv``."""
    out = Path(out_dir)
    service = [*gateway_users(gateways), OPS_USER]
    existing = [name for name in FILES if (out / name).exists()]
    if existing and not force:
        raise ConfigError(f"{out} already holds {', '.join(existing)}: new passwords would lock deployed "
                          "devices out (add poles with `credentials add`, or use --force to replace them)")
    out.mkdir(parents=True, exist_ok=True)
    users = {p: secrets.token_urlsafe(18) for p in poles}
    users.update({u: secrets.token_urlsafe(24) for u in service})
    hashed = passwd_text(users, hasher, out)  # fails before anything is replaced
    atomic_write(out / "secrets.csv", _secrets_text(users), 0o600)
    atomic_write(out / "passwd", hashed, 0o600)
    atomic_write(out / "acl", acl_text(service[:-1]), 0o644)
    return Written(out / "passwd", out / "acl", out / "secrets.csv", service[0], users[service[0]], len(poles),
                   {u: users[u] for u in service})


# --- one pole at a time --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Provisioned:
    action: Action
    poles: tuple[str, ...]
    total: int  # users in passwd afterwards
    passwd: Path
    secrets: Path


def _passwd_lines(path: Path) -> dict[str, str]:
    """username -> the whole line (kept verbatim for everyone not being changed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: generate the fleet first (credentials --poles N "
                          f"--out {path.parent})") from None
    lines: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, _ = line.partition(":")
        if not sep:
            raise ConfigError(f"{path} line {n} is not username:hash")
        lines[user] = line
    return lines


def _secrets_rows(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"username", "password"} <= set(rows[0]):
        raise ConfigError(f"{path} has no username,password header")
    return {r["username"]: r["password"] for r in rows}


def provision(out_dir: str | Path, action: Action, poles: Sequence[str], *, hasher: Hasher = "auto") -> Provisioned:
    """``add`` new poles, ``remove`` poles or ``rotate`` their passwords; every other user's line is
    kept as it was. ``add`` refuses a pole that has a password, ``remove``/``rotate`` one that has not.

    secrets.csv is written before passwd, so an interrupted run never leaves a live password that
    secrets.csv lacks."""
    if action not in ACTIONS:
        raise ConfigError(f"unknown credentials action {action!r}: choose add, remove or rotate")
    out = Path(out_dir)
    wanted = [str(PoleId(p)) for p in poles]
    if not wanted:
        raise ConfigError("no pole ids given")
    if len(set(wanted)) != len(wanted):
        raise ConfigError("the same pole id is given twice")
    _passwd_lines(out / "passwd")  # a missing fleet is reported before a lock file is made
    with open(out / ".credentials.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two provisioning runs at once must not lose each other's change
        return _provision_locked(out, action, wanted, hasher)


def _provision_locked(out: Path, action: Action, wanted: list[str], hasher: Hasher) -> Provisioned:
    passwd_path, secrets_path = out / "passwd", out / "secrets.csv"
    lines = _passwd_lines(passwd_path)
    known = [p for p in wanted if p in lines]
    unknown = [p for p in wanted if p not in lines]
    if action == "add" and known:
        raise ConfigError(f"{known[0]} already has a password in {passwd_path} "
                          f"({len(known)} of {len(wanted)} known): use rotate to change it")
    if action != "add" and unknown:
        raise ConfigError(f"{unknown[0]} has no password in {passwd_path} "
                          f"({len(unknown)} of {len(wanted)} unknown): nothing to {action}")
    rows = _secrets_rows(secrets_path)
    if action == "remove":
        for p in wanted:
            lines.pop(p)
            rows.pop(p, None)
    else:
        fresh = {p: secrets.token_urlsafe(18) for p in wanted}
        hashed = passwd_text(fresh, hasher, out).splitlines()
        for line in hashed:
            lines[line.partition(":")[0]] = line
        rows.update(fresh)
    atomic_write(secrets_path, _secrets_text(rows), 0o600)
    atomic_write(passwd_path, "".join(f"{line}\n" for line in lines.values()), 0o600)
    return Provisioned(action, tuple(wanted), len(lines), passwd_path, secrets_path)

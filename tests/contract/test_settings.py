"""contract.settings: the one loader every component's settings go through."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from contract.cli import quiet_logs
from contract.errors import ConfigError
from contract.settings import ConfigProblems, FileSettings, load_settings
from edge.config import EdgeConfig
from gateway.settings import GatewaySettings
from operators.cli import OpsSettings


class _Demo(FileSettings):
    model_config = SettingsConfigDict(env_prefix="LAMPWATCH_TESTDEMO_", extra="forbid", frozen=True)
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    password: SecretStr | None = None


def test_precedence_constructor_then_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "lw.toml"
    f.write_text('[demo]\nhost = "file-host"\nport = 1000\npassword = "s3cret"\n')
    s = load_settings(_Demo, f, section="demo")
    assert (s.host, s.port) == ("file-host", 1000) and s.password is not None
    assert "s3cret" not in repr(s)  # secrets never printed
    monkeypatch.setenv("LAMPWATCH_TESTDEMO_PORT", "2000")
    assert load_settings(_Demo, f, section="demo").port == 2000
    assert load_settings(_Demo, f, section="demo", port=3000).port == 3000
    assert load_settings(_Demo).host == "127.0.0.1"  # no file: defaults and env only


def test_whole_file_when_there_is_no_section(tmp_path: Path) -> None:
    f = tmp_path / "lw.toml"
    f.write_text('host = "flat"\n')
    assert load_settings(_Demo, f, section="demo").host == "flat"


def test_every_mistake_at_once_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "lw.toml"
    f.write_text('port = 0\ncolour = "red"\n')
    with pytest.raises(ConfigProblems) as ei:
        load_settings(_Demo, f, what="demo setting")
    assert len(ei.value.problems) == 2 and "\n" not in str(ei.value)
    assert str(ei.value).startswith("invalid demo setting: ") and str(ei.value).endswith("(+1 more)")
    assert all(line.startswith(f"{f}: ") for line in ei.value.lines())


@pytest.mark.parametrize("text, why", [(None, "not found"), ("port = [", "not valid TOML")])
def test_unreadable_files_are_one_clear_error(tmp_path: Path, text: str | None, why: str) -> None:
    f = tmp_path / "lw.toml"
    if text is not None:
        f.write_text(text)
    with pytest.raises(ConfigError, match=why):
        load_settings(_Demo, f)


def test_two_threads_loading_two_files_never_see_each_other(tmp_path: Path) -> None:
    files = []
    for i in range(2):
        f = tmp_path / f"{i}.toml"
        f.write_text(f"port = {1000 + i}\n")
        files.append(f)
    seen: list[list[int]] = [[], []]
    go = threading.Barrier(2)

    def load(i: int) -> None:
        go.wait()
        for _ in range(300):
            seen[i].append(load_settings(_Demo, files[i]).port)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(seen[0]) == {1000} and set(seen[1]) == {1001}
    assert _Demo().port == 1883  # nothing of either file is left behind


def test_every_component_uses_the_one_loader() -> None:
    for cls in (EdgeConfig, GatewaySettings, OpsSettings):
        assert issubclass(cls, FileSettings), cls


#: what a broker field is called in no component: each is mqtt_<name> everywhere (README, Configuration)
BARE_BROKER_NAMES = {"host", "port", "brokers", "version", "username", "password", "tls", "tls_ca", "tls_cert",
                     "tls_key", "keepalive_s", "session_expiry_s"}


def test_one_naming_scheme_for_broker_settings() -> None:
    for cls in (EdgeConfig, GatewaySettings, OpsSettings):
        assert cls.model_config.get("env_prefix", "").startswith("LAMPWATCH_"), cls
        assert BARE_BROKER_NAMES.isdisjoint(cls.model_fields), (cls, BARE_BROKER_NAMES & set(cls.model_fields))
        assert {"mqtt_host", "mqtt_port", "mqtt_username", "mqtt_password"} <= set(cls.model_fields), cls


def test_mqtt_version_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix in ("LAMPWATCH_GATEWAY_", "LAMPWATCH_OPS_"):
        monkeypatch.setenv(prefix + "MQTT_VERSION", "311")
    monkeypatch.setenv("LAMPWATCH_EDGE_MQTT_VERSION", "311")
    assert GatewaySettings().mqtt_version == 311 and OpsSettings().mqtt_version == 311
    assert EdgeConfig(pole="p-1", district="north").mqtt_version == 311
    monkeypatch.setenv("LAMPWATCH_GATEWAY_MQTT_VERSION", "4")
    with pytest.raises(ValueError):
        GatewaySettings()


def test_quiet_logs_restores_levels() -> None:
    lg = logging.getLogger("lampwatch.test.quiet")
    lg.setLevel(logging.DEBUG)
    q = quiet_logs("lampwatch.test.quiet")

    @q
    def inner() -> int:
        with q:  # nested use of the same object
            assert lg.level == logging.ERROR
        return lg.level

    assert inner() == logging.ERROR
    assert lg.level == logging.DEBUG


def test_the_gateway_saves_its_detection_state_as_often_as_set(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.app import build_with_store
    from gateway.opsbus import OperatorStage
    from ingest.sqlite import SqliteStore

    monkeypatch.setenv("LAMPWATCH_GATEWAY_DETECT_SAVE_EVERY_S", "5")
    monkeypatch.setenv("LAMPWATCH_GATEWAY_DETECT_LEARNED_SAVE_EVERY_S", "50")
    settings = GatewaySettings(state_dir=str(tmp_path), store="sqlite", ops_listen=False)
    store = SqliteStore(tmp_path / "lw.sqlite")
    try:
        ops = build_with_store(settings, store).on_outcome
        assert isinstance(ops, OperatorStage)
        assert (ops.stage.save_every_s, ops.stage.learned_save_every_s) == (5.0, 50.0)
        ops.close()
    finally:
        store.close()
    monkeypatch.setenv("LAMPWATCH_GATEWAY_DETECT_SAVE_EVERY_S", "0")
    with pytest.raises(ValueError, match="detect_save_every_s"):
        GatewaySettings()

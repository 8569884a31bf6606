"""The committed machine-readable contract (docs/schema/) is what the code generates, is valid JSON
Schema / AsyncAPI structure, and agrees with the pydantic models on what is valid."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from contract import export, models, topics
from contract.catalog import METRICS

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "docs" / "schema"
DOC = ROOT / "docs" / "contract.md"
NOW = 1_764_597_600_000


def test_committed_files_are_what_the_code_generates() -> None:
    assert export.stale(SCHEMA_DIR) == [], "run: python -m contract.export --out docs/schema --doc docs/contract.md"
    text = DOC.read_text(encoding="utf-8")
    assert export.with_metric_table(text) == text, "the catalog table in docs/contract.md is stale"


def test_check_mode_names_a_stale_file_and_write_mode_repairs_it(tmp_path: Path) -> None:
    export.write(tmp_path)
    (tmp_path / "status.schema.json").write_text("{}\n")
    cmd = [sys.executable, "-m", "contract.export", "--out", str(tmp_path), "--check"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    assert res.returncode == 1 and "status.schema.json" in res.stderr and len(res.stderr.splitlines()) == 1
    subprocess.run(cmd[:-1], check=True, capture_output=True, cwd=ROOT)
    assert export.stale(tmp_path) == []


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


VALID: dict[str, list[dict[str, Any]]] = {
    "telemetry": [{"v": 1, "pole": "p-1", "boot": "b1", "samples": [{"seq": 0, "ts": NOW, "m": {"tilt_deg": 0.5}}]},
                  {"pole": "p-1", "boot": "b1", "samples": [{"seq": 9, "ts": NOW, "m": {"smoke": 0}}], "evicted": 3}],
    "status": [{"pole": "p-1", "district": "north", "state": "offline", "ts": NOW, "reason": "will"}],
    "command": [{"id": "c1", "cmd": "ping"}, {"v": 1, "id": "c2", "cmd": "set_interval", "interval_s": 5},
                {"id": "c3", "cmd": "set_thresholds", "thresholds": {"tilt_deg": 4}},
                {"id": "c4", "cmd": "sample_now"}],
    "command-ack": [{"id": "c1", "pole": "p-1", "ok": True, "ts": NOW, "result": {"uptime_s": 1.5, "boot": "b"}}],
    "gateway-status": [{"state": "offline"}, {"state": "online", "ts": NOW, "gateway": "g0", "districts": ["+"],
                                              "counters": {"acked": 3}}],
}
INVALID: dict[str, list[dict[str, Any]]] = {
    "telemetry": [{"pole": "p-1", "boot": "b1", "samples": []},  # no sample
                  {"pole": "p-1", "boot": "b1", "samples": [{"seq": 0, "ts": 1_700_000_000, "m": {"a": 1}}]},  # s
                  {"pole": "p-1", "boot": "b1", "samples": [{"seq": 0, "ts": NOW, "m": {"a": 1}}], "district": "n"},
                  {"pole": "P 1", "boot": "b1", "samples": [{"seq": 0, "ts": NOW, "m": {"a": 1}}]},
                  {"pole": "p-1", "boot": "b1", "samples": [{"seq": -1, "ts": NOW, "m": {"a": 1}}]},
                  {"pole": "p-1", "boot": "b1",
                   "samples": [{"seq": 0, "ts": NOW, "m": {f"m{i}": 1 for i in range(65)}}]}],
    "status": [{"pole": "p-1", "district": "north", "state": "gone", "ts": NOW}],
    "command": [{"id": "c1", "cmd": "reboot"}, {"id": "c1", "cmd": "set_interval"}, {"cmd": "ping"},
                {"id": "c1", "cmd": "set_interval", "interval_s": 0.01}],
    "command-ack": [{"id": "c1", "pole": "p-1", "ok": "yes", "ts": NOW}],
    "gateway-status": [{"state": "sleeping"}],
}


def _pydantic_ok(name: str, doc: dict[str, Any]) -> bool:
    source = export.PAYLOADS[name][0]
    try:
        if hasattr(source, "validate_json"):
            source.validate_json(json.dumps(doc))
        else:
            source.model_validate_json(json.dumps(doc))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(VALID))
def test_schema_and_model_agree(name: str) -> None:
    v = _validator(name)
    for doc in VALID[name]:
        assert list(v.iter_errors(doc)) == [] and _pydantic_ok(name, doc), doc
    for doc in INVALID[name]:
        assert list(v.iter_errors(doc)) and not _pydantic_ok(name, doc), doc


def test_telemetry_schema_carries_the_limits() -> None:
    s = json.loads((SCHEMA_DIR / "telemetry.schema.json").read_text())
    assert s["properties"]["samples"]["maxItems"] == models.MAX_SAMPLES_PER_MESSAGE == 1000
    sample = s["$defs"]["Sample"]["properties"]
    assert sample["m"]["maxProperties"] == models.MAX_METRICS_PER_SAMPLE == 64
    assert sample["ts"]["minimum"] == models.TS_MIN_MS and sample["ts"]["maximum"] == models.TS_MAX_MS


def test_asyncapi_document_is_consistent_with_the_topics() -> None:
    doc = json.loads((SCHEMA_DIR / "asyncapi.json").read_text())
    assert doc["asyncapi"] == "3.0.0"
    schemas = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.json")}
    registry: Registry = Registry().with_resources(  # type: ignore[type-arg]
        (name, Resource.from_contents(s)) for name, s in schemas.items())

    def resolve(ref: str) -> Any:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    used = set()
    for op in doc["operations"].values():
        ch = resolve(op["channel"]["$ref"])
        used.add(op["channel"]["$ref"])
        assert op["action"] in ("send", "receive") and op["bindings"]["mqtt"]["qos"] == 1
        for m in op["messages"]:
            assert m["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
            msg = resolve(resolve(m["$ref"])["$ref"])
            assert registry.get_or_retrieve(msg["payload"]["schema"]["$ref"]).value.contents["$schema"]
        params = set(re.findall(r"{(\w+)}", ch["address"]))
        assert params == set(ch.get("parameters", {})), ch["address"]
    assert used == {f"#/channels/{c}" for c in doc["channels"]}
    # every address is a topic our code builds, with its parameters filled in
    fill = {"district": "north", "pole": "p-000001", "key": "leakage.high", "reason": "bad_json", "gateway": "gw-0"}
    built = {topics.telemetry("north", "p-000001"), topics.status("north", "p-000001"),
             topics.cmd("north", "p-000001"), topics.cmd_ack("north", "p-000001"),
             topics.alert("north", "p-000001", "leakage.high"), topics.deadletter("bad_json"),
             topics.gateway_status("gw-0")}
    assert {ch["address"].format(**fill) for ch in doc["channels"].values()} == built
    retained = {c for c, ch in doc["channels"].items()
                if any(op["bindings"]["mqtt"]["retain"] for op in doc["operations"].values()
                       if op["channel"]["$ref"] == f"#/channels/{c}")}
    assert retained == {"status", "alert", "gateway-status"}


def test_catalog_export_is_the_catalog() -> None:
    cat = json.loads((SCHEMA_DIR / "catalog.json").read_text())
    assert [m["name"] for m in cat["metrics"]] == [m.name for m in METRICS]
    for exported, m in zip(cat["metrics"], METRICS, strict=True):
        assert (exported["unit"], exported["lo"], exported["hi"], exported["dtype"]) == (m.unit, m.lo, m.hi, m.dtype)
        assert len(exported["thresholds"]) == len(m.thresholds)

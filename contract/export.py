"""Machine-readable contract, generated from the code: JSON Schema per payload, an AsyncAPI 3
document of the topics, and the metric catalog.

    python -m contract.export --out docs/schema --doc docs/contract.md          # (re)write the files
    python -m contract.export --out docs/schema --doc docs/contract.md --check  # exit 1 if any is stale

The files are committed (docs/schema/); tests/contract/test_export.py fails when they drift from
the models, the topics or the catalog. Nothing here is hand-maintained: change the models, re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter

from contract import models, topics
from contract.catalog import METRICS
from contract.ids import DISTRICT_RE, POLE_RE

#: bytes; the gateway dead-letters a larger payload as ``too_large`` (gateway.decode.MAX_PAYLOAD_BYTES)
MAX_PAYLOAD_BYTES = 256 * 1024


# name -> (JSON Schema source, title); the order of the doc's payload table
PAYLOADS: dict[str, tuple[Any, str]] = {
    "telemetry": (models.Telemetry, "Telemetry: samples from one pole"),
    "status": (models.Status, "Status: a pole's presence (birth / online / offline)"),
    "command": (models.COMMAND, "Command to a pole (discriminated by cmd)"),
    "command-ack": (models.CommandAck, "CommandAck: a pole's answer to a command"),
    "alert": (models.Alert, "Alert: alarm state for one pole and rule"),
    "dead-letter": (models.DeadLetter, "DeadLetter: input the gateway refused, with the reason"),
    "gateway-status": (models.GatewayStatus, "GatewayStatus: a gateway's presence and self-metrics"),
}

# channel name -> (address, payload, direction from the pole's side, qos, retain, description)
_P = "lampwatch/v1/{district}/{pole}"
CHANNELS: dict[str, tuple[str, str, Literal["send", "receive"], int, bool, str]] = {
    "telemetry": (f"{_P}/telemetry", "telemetry", "send", 1, False,
                  "edge -> gateway: samples, in sequence order, at least once"),
    "status": (f"{_P}/status", "status", "send", 1, True,
               "edge -> all: birth, online, offline; offline with reason=will is the pole's Last Will"),
    "cmd": (f"{_P}/cmd", "command", "receive", 1, False, "operator -> edge: one command per message"),
    "cmd-ack": (f"{_P}/cmd/ack", "command-ack", "send", 1, False, "edge -> operator: the result of a command"),
    "alert": (f"{_P}/alert/{{key}}", "alert", "receive", 1, True,
              "gateway -> all: alarm state per pole and rule (raised or cleared)"),
    "deadletter": (f"{topics.DEADLETTER_PREFIX}/{{reason}}", "dead-letter", "receive", 1, False,
                   "gateway -> all: refused input with its reason"),
    "gateway-status": (f"{topics.SYS}/gateway/{{gateway}}/status", "gateway-status", "receive", 1, True,
                       "gateway -> all: presence and self-metrics; {\"state\":\"offline\"} is its Last Will"),
}
_PARAMS = {
    "district": f"district name, matches {DISTRICT_RE.pattern}",
    "pole": f"pole id, matches {POLE_RE.pattern}",
    "key": "alert key, matches [a-z0-9][a-z0-9_.-]{0,95}",
    "reason": "dead-letter reason, matches [a-z0-9_]{1,48}",
    "gateway": "gateway client id",
}


def json_schema(name: str) -> dict[str, Any]:
    source, title = PAYLOADS[name]
    schema: dict[str, Any] = (source.json_schema() if isinstance(source, TypeAdapter)
                              else source.model_json_schema())
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://lampwatch.invalid/schema/v{models.SCHEMA_VERSION}/{name}.schema.json",
            "title": title, **{k: v for k, v in schema.items() if k != "title"}}


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document of every topic; operations are seen from the pole's side."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for ch, (address, payload, action, qos, retain, desc) in CHANNELS.items():
        params = [p for p in _PARAMS if "{" + p + "}" in address]
        channels[ch] = {"address": address, "description": desc,
                        "messages": {payload: {"$ref": f"#/components/messages/{payload}"}},
                        "parameters": {p: {"description": _PARAMS[p]} for p in params}}
        operations[f"{action}-{ch}"] = {
            "action": action, "channel": {"$ref": f"#/channels/{ch}"},
            "messages": [{"$ref": f"#/channels/{ch}/messages/{payload}"}],
            "bindings": {"mqtt": {"qos": qos, "retain": retain, "bindingVersion": "0.2.0"}}}
    for name, (_src, title) in PAYLOADS.items():
        messages[name] = {"name": name, "title": title, "contentType": "application/json",
                          "payload": {"schemaFormat": "application/schema+json;version=draft-2020-12",
                                      "schema": {"$ref": f"{name}.schema.json"}}}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "lampwatch device contract", "version": f"{models.SCHEMA_VERSION}.0.0",
                 "description": "Topics and payloads between street-lamp poles, the broker and the gateway "
                                "(docs/contract.md is the prose). Operations are from the pole's side: "
                                "send = the pole publishes, receive = the pole (or any client) subscribes. "
                                f"Payloads are UTF-8 JSON, at most {MAX_PAYLOAD_BYTES} bytes."},
        "defaultContentType": "application/json",
        "servers": {"broker": {"host": "broker.example:8883", "protocol": "secure-mqtt", "protocolVersion": "5",
                               "description": "Mosquitto: TLS, one username and password per pole, ACL"}},
        "channels": channels, "operations": operations, "components": {"messages": messages},
    }


def catalog() -> dict[str, Any]:
    return {"version": models.SCHEMA_VERSION, "metrics": [asdict(m) for m in METRICS]}


CATALOG_BEGIN = "<!-- catalog table: generated by `python -m contract.export --doc docs/contract.md` -->"
CATALOG_END = "<!-- end of catalog table -->"


def _num(x: float) -> str:
    return f"{x:g}"


def metric_table() -> str:
    """The catalog as the Markdown table docs/contract.md carries between the two markers."""
    rows = ["| metric | unit | type | valid range | group | edge fast path | what it is |",
            "|---|---|---|---|---|---|---|"]
    for m in METRICS:
        kind = "0 or 1" if m.dtype == "bool" else "number"
        rows.append(f"| `{m.name}` | {m.unit or '-'} | {kind} | {_num(m.lo)} .. {_num(m.hi)} | {m.group} | "
                    f"{'yes' if m.critical else ''} | {m.description} |")
    return "\n".join([CATALOG_BEGIN, *rows, CATALOG_END])


def with_metric_table(doc: str) -> str:
    """``doc`` with its catalog table (between the markers) replaced by the current one."""
    start, end = doc.find(CATALOG_BEGIN), doc.find(CATALOG_END)
    if start < 0 or end < start:
        raise ValueError("the document has no catalog table markers")
    return doc[:start] + metric_table() + doc[end + len(CATALOG_END):]


def render() -> dict[str, str]:
    """file name -> exact file text (stable key order, trailing newline)."""
    def dump(doc: Mapping[str, Any]) -> str:
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"

    out = {f"{name}.schema.json": dump(json_schema(name)) for name in PAYLOADS}
    out["asyncapi.json"] = dump(asyncapi())
    out["catalog.json"] = dump(catalog())
    return out


def stale(out_dir: Path) -> list[str]:
    """Files in ``out_dir`` that are missing or differ from what the code generates now."""
    bad = []
    for name, text in render().items():
        p = out_dir / name
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            bad.append(name)
    return bad


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        (out_dir / name).write_text(text, encoding="utf-8")
        written.append(out_dir / name)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m contract.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/schema"), help="directory (default docs/schema)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    ap.add_argument("--doc", type=Path, default=None, help="also refresh the catalog table in this Markdown file")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        if args.doc is not None and with_metric_table(args.doc.read_text(encoding="utf-8")) != \
                args.doc.read_text(encoding="utf-8"):
            bad.append(str(args.doc))
        if bad:
            print(f"contract.export: error: stale in {args.out}: {', '.join(bad)} "
                  f"(run: python -m contract.export --out {args.out})", file=sys.stderr)
            return 1
        print(f"schemas: up to date files={len(render())} dir={args.out}")
        return 0
    files = write(args.out)
    if args.doc is not None:
        args.doc.write_text(with_metric_table(args.doc.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"schemas: written files={len(files)} dir={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

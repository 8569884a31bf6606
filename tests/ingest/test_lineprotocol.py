"""Line protocol: byte-identical to influxdb-client's serializer (differential, hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point as IPoint

from contract import schema
from contract.catalog import METRICS
from contract.readings import Point, Reading
from ingest.lineprotocol import encode

keys = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda s: not s.endswith("\\"))
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=30)
values = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**63 - 1),
                   st.booleans(), text)


@settings(max_examples=300)
@given(keys.filter(lambda s: not s.startswith("#")),  # a leading '#' makes a comment line: never a measurement
       st.dictionaries(keys, keys.filter(lambda s: s.strip() != ""), max_size=3),
       st.dictionaries(keys, values, min_size=1, max_size=5), st.integers(0, 2**62))
def test_encoder_matches_influxdb_client(measurement: str, tags: dict[str, str], fields: dict[str, object],
                                         ts: int) -> None:
    ours = encode(Point(measurement, tuple(sorted(tags.items())), fields, ts))  # type: ignore[arg-type]
    ip = IPoint(measurement).time(ts)
    for k, v in tags.items():
        ip = ip.tag(k, v)
    for k, v in fields.items():
        ip = ip.field(k, v)
    assert ours == ip.to_line_protocol()


@given(st.from_regex(r"p-[0-9]{1,6}", fullmatch=True), st.integers(0, 10**9),
       st.dictionaries(st.sampled_from([m.name for m in METRICS]),
                       st.floats(-1e6, 1e6, allow_nan=False), min_size=1))
def test_telemetry_points_encode_like_influxdb_client(pole: str, seq: int, values: dict[str, float]) -> None:
    p = schema.telemetry_point(Reading(pole, "north", "b", seq, 1_700_000_000_000, values))
    ip = IPoint("telemetry").tag("district", "north").tag("pole", pole).time(p.ts_ns)
    for k, v in p.fields.items():
        ip = ip.field(k, v)
    assert encode(p) == ip.to_line_protocol()
    assert encode(p).endswith(" 1700000000000000000")

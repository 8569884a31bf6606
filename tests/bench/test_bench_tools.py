"""The bench's own tools: the py-spy summary (bench.flame) and the in-process hot path (bench.hotpath)."""

from __future__ import annotations

import pytest

from bench import flame, hotpath

RAW = """\
thread (11): gateway-pipeline;Thread.run (threading.py:982);Gateway._run (gateway/service.py:380);\
decode_telemetry (gateway/decode.py:90) 30
thread (11): gateway-pipeline;Thread.run (threading.py:982);Gateway._run (gateway/service.py:380) 10
thread (12): paho-mqtt-client-bench-gw0-3;Thread.run (threading.py:982);Client._loop (paho/mqtt/client.py:1690) 60
not a stack line
"""


def test_flame_counts_threads_inclusive_and_self_samples() -> None:
    total, threads, incl, leaf = flame.summarise(RAW)
    assert total == 100
    assert threads == {"gateway-pipeline": 40, "paho-mqtt-client-<id>": 60}
    assert incl["threading.py:Thread.run"] == 100 and incl["gateway/service.py:Gateway._run"] == 40
    assert leaf["gateway/decode.py:decode_telemetry"] == 30 and leaf["gateway/service.py:Gateway._run"] == 10
    assert leaf["paho/mqtt/client.py:Client._loop"] == 60 and "threading.py:Thread.run" not in leaf


def test_hotpath_runs_every_stage_over_real_messages() -> None:
    msgs = hotpath.render(300, 2)
    assert len(msgs) == 600
    r = hotpath.run(msgs, batch=100)
    assert r["msgs"] == 600 and r["bytes_per_msg"] > 300  # every message became a line of line protocol
    assert r["us_per_msg"] >= r["decode_us"] > 0 and r["encode_us"] > 0
    mem = dict(hotpath.memory(msgs, batch=100))
    assert mem["total"] > 0 and any(k.startswith("gateway/dedup.py") for k in mem)


def test_eval_runs_the_seed_block_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import eval as ev

    assert ev.main(["--no-nab", "--first-seed", "-1"]) == 2
    assert "--first-seed >= 0" in capsys.readouterr().err
    assert ev.main(["--no-nab", "--seeds", "2", "--first-seed", "777", "--poles", "4", "--days", "0.05"]) == 0
    out = capsys.readouterr()
    assert "seed 777:" in out.err and "seed 778:" in out.err and "seed 101:" not in out.err
    assert "seeds=2" in out.out

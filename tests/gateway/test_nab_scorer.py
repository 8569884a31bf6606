"""The NAB scorer reproduces NAB's own published figures for the Windowed Gaussian detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway import nab
from tests.servers import missing

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
NAB_DIR = REPO.parent / "shared" / "nab"  # <repo>/../shared/nab


@pytest.fixture(scope="module")
def corpus() -> list[nab.FileLayout]:
    if not (NAB_DIR / "labels" / "combined_windows.json").is_file():
        missing(f"NAB corpus not present at {NAB_DIR} (CI provides ../shared/nab)")
    layouts, _ = nab.load_corpus(NAB_DIR)
    return layouts


def test_corpus_shape(corpus: list[nab.FileLayout]) -> None:
    assert len(corpus) == 58
    assert sum(x.n_rows for x in corpus) == 365_558
    assert sum(len(x.windows) for x in corpus) == 116


def test_windowed_gaussian_published_scores(corpus: list[nab.FileLayout]) -> None:
    scores = nab.score_results(NAB_DIR, "windowedGaussian", layouts=corpus)
    got = {k: round(v.normalized, 2) for k, v in scores.items()}
    assert got == {"standard": 39.65, "reward_low_FP_rate": 20.87, "reward_low_FN_rate": 47.41}
    assert nab.summary_line(scores) == "nab: standard=39.65 low_fp=20.87 low_fn=47.41"


def test_null_and_perfect_detectors(corpus: list[nab.FileLayout]) -> None:
    null = nab.score_all(corpus, [np.zeros(x.n_rows) for x in corpus])
    perfect = nab.score_all(corpus, nab.perfect_scores(corpus))
    for name in nab.PROFILES:
        assert null[name].normalized == pytest.approx(0.0, abs=1e-9)
        assert perfect[name].normalized == pytest.approx(100.0, abs=1e-9)
    assert null["reward_low_FN_rate"].null == -232.0


def _one_window_file(n: int = 1000, start: int = 500, end: int = 599) -> nab.FileLayout:
    return nab.FileLayout("cat/f.csv", n, np.array([[start, end]]))


def test_earliest_detection_in_window_counts() -> None:
    lay = _one_window_file()
    early, late = np.zeros(1000), np.zeros(1000)
    early[[510, 590]] = 1.0
    late[590] = 1.0
    s_early = nab.score_corpus([lay], [early], "standard")
    s_late = nab.score_corpus([lay], [late], "standard")
    assert s_early.raw > s_late.raw > 0
    # position -(599-510+1)/100 = -0.9 -> sigma(-0.9)/sigma(-1)
    expected = float(nab.scaled_sigmoid(-0.9) / nab.scaled_sigmoid(-1.0))
    assert s_early.raw == pytest.approx(expected)


def test_false_positive_costs_and_probation() -> None:
    lay = _one_window_file()
    before = np.zeros(1000)
    before[[300, 510]] = 1.0  # FP before any window: -A_FP in full
    in_probation = np.zeros(1000)
    in_probation[[10, 510]] = 1.0  # row 10 < floor(0.15*1000): ignored
    tp = float(nab.scaled_sigmoid(-0.9) / nab.scaled_sigmoid(-1.0))
    assert nab.score_corpus([lay], [before], "standard").raw == pytest.approx(tp - 0.11)
    assert nab.score_corpus([lay], [before], "reward_low_FP_rate").raw == pytest.approx(tp - 0.22)
    assert nab.score_corpus([lay], [in_probation], "standard").raw == pytest.approx(tp)


def test_threshold_is_optimised_over_the_corpus() -> None:
    lay = _one_window_file()
    sc = np.full(1000, 0.2)
    sc[550] = 0.9  # a lower threshold would add 700+ false positives
    res = nab.score_corpus([lay], [sc], "standard")
    assert res.threshold == 0.9
    thresholds, raws = nab.sweep([lay], [sc], nab.PROFILES["standard"])
    assert thresholds[0] == np.inf and raws[0] == -1.0
    assert raws.argmax() == 1


def test_half_corpus_threshold_is_chosen_on_the_odd_files_only() -> None:
    # sorted keys a, b, c, d: odd positions a, c (choose), even positions b, d (score)
    lays = [nab.FileLayout(f"cat/{k}.csv", 1000, np.array([[500, 599]])) for k in "dbca"]
    scores = []
    for k in "dbca":
        s = np.zeros(1000)
        if k in "ac":
            s[520] = 0.9  # the chosen files detect at 0.9
        else:
            s[520] = 0.5  # the held-out files only reach 0.5: missed at the chosen threshold
        scores.append(s)
    odd, even = nab.half_split(lays)
    assert [lays[i].key for i in odd] == ["cat/a.csv", "cat/c.csv"]
    half = nab.half_corpus(lays, scores)
    assert half.threshold == 0.9 and half.raw == -2.0 and half.normalized == 0.0
    # at its own optimum the held-out half would have scored: the figure is not in-sample
    own = nab.score_corpus([lays[i] for i in even], [scores[i] for i in even], "standard")
    assert own.normalized > 50.0
    assert nab.score_at([lays[i] for i in even], [scores[i] for i in even], "standard", 0.5).raw == own.raw

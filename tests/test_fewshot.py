import csv

import pytest

from cmrfm.engine.fewshot import FewshotConfig, run_fewshot, summarise
from cmrfm.engine.finetune import FinetuneConfig
from cmrfm.errors import ConfigError

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _base(**kw):
    cfg = dict(
        task="sax-seg",
        synthetic=True,
        image_size=32,
        backbone=TINY,
        steps=1,
        batch_size=2,
        folds=2,
        fold=0,
        amp="off",
    )
    cfg.update(kw)
    return FinetuneConfig(**cfg)


def test_sweep_writes_csv_and_plot_and_resumes(tmp_path):
    cfg = FewshotConfig(ks=[1, 0], seeds=2, methods=["scratch", "baseline"], out=str(tmp_path), base=_base())
    rows = run_fewshot(cfg, progress=False)
    assert len(rows) == 2 * 2 * 2
    assert (tmp_path / "fewshot.png").stat().st_size > 1000
    with (tmp_path / "fewshot.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert {r["method"] for r in table} == {"scratch", "baseline"} and {r["k"] for r in table} == {"1", "all"}
    assert all(r["steps"] == "1" for r in table)  # the budget is recorded beside each number
    summary = summarise(rows)
    assert summary["scratch"]["1"][2] == 2
    # a second call reuses every finished run (fast, same values)
    again = run_fewshot(cfg, progress=False)
    assert [r["value"] for r in again] == [r["value"] for r in rows]
    assert [r["seconds"] for r in again] == [r["seconds"] for r in rows]  # training time kept from the card


def test_pretrained_needs_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"base\.init"):
        run_fewshot(FewshotConfig(ks=[1], seeds=1, methods=["pretrained"], out=str(tmp_path), base=_base()))


def test_sweep_metric_other_than_primary(tmp_path):
    base = _base()
    cfg = FewshotConfig(ks=[1], seeds=1, methods=["scratch"], out=str(tmp_path), base=base, metric="dice_LV")
    rows = run_fewshot(cfg, progress=False)
    assert rows[0]["metric"] == "dice_LV" and rows[0]["value"] == rows[0]["m_dice_LV"]
    bad = FewshotConfig(ks=[1], seeds=1, methods=["scratch"], out=str(tmp_path), base=base, metric="kappa")
    with pytest.raises(ConfigError, match="no metric 'kappa'"):
        run_fewshot(bad, progress=False)


def test_collect_only_tabulates_finished_runs_and_trains_nothing(tmp_path):
    base = _base()
    run_fewshot(
        FewshotConfig(ks=[1], seeds=1, methods=["scratch"], out=str(tmp_path), base=base), progress=False
    )
    wider = FewshotConfig(
        ks=[1, 2], seeds=2, methods=["scratch", "baseline"], out=str(tmp_path), base=base, train_missing=False
    )
    rows = run_fewshot(wider, progress=False)
    assert [(r["method"], r["k"], r["seed"]) for r in rows] == [("scratch", 1, 0)]
    assert not (tmp_path / "baseline").exists()
    with pytest.raises(ConfigError, match="no finished runs"):
        run_fewshot(
            FewshotConfig(
                ks=[1],
                seeds=1,
                methods=["scratch"],
                out=str(tmp_path / "empty"),
                base=base,
                train_missing=False,
            ),
            progress=False,
        )

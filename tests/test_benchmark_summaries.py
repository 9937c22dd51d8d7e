"""Summaries of the benchmark scripts (tasks_cv, fewshot_results) checked against hand-computed cases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str = "tasks_cv"):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import their sibling results.py
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lesion_summary_hand_computed():
    rows = [  # two infarct cases (one found, one missed), two normal cases (one false alarm < 1 mL)
        {"ml_ref_infarct": "2", "ml_pred_infarct": "3", "dice_infarct": "0.7", "dice_scar": "0.8"},
        {"ml_ref_infarct": "0", "ml_pred_infarct": "0.5", "dice_infarct": "1.0", "dice_scar": "0.0"},
        {"ml_ref_infarct": "5", "ml_pred_infarct": "0.2", "dice_infarct": "0.0", "dice_scar": "0.1"},
        {"ml_ref_infarct": "0", "ml_pred_infarct": "0", "dice_infarct": "1.0", "dice_scar": "1.0"},
    ]
    summary = _script()._lesion_summary(rows)
    assert summary["dice_infarct (infarct cases)"][0] == pytest.approx(0.35)  # normals excluded
    assert summary["dice_scar = infarct + MVO (infarct cases)"][0] == pytest.approx(0.45)
    assert summary["infarct present accuracy (seg ≥ 1.0 mL)"][0] == pytest.approx(0.75)
    # positive scores {3, 0.2} vs negative {0.5, 0}: 3 of 4 pairs ordered right
    assert summary["infarct present AUROC (predicted mL)"][0] == pytest.approx(0.75)


def test_fewshot_summary_pairs_seeds_and_tolerates_a_partial_sweep():
    rows = []
    for seed in range(3):
        for method, value in (("pretrained", 0.6 + 0.01 * seed), ("scratch", 0.5), ("baseline", 0.55)):
            rows.append({"method": method, "k": "1", "seed": str(seed), "value": str(value)})
    rows = rows[:-2]  # the sweep stopped before seed 2's scratch and baseline runs
    script = _script("fewshot_results")
    methods, ks, values = script.summarise(rows)
    assert methods == ["pretrained", "scratch", "baseline"] and ks == ["1"]
    assert len(values[("pretrained", "1")]) == 3 and len(values[("scratch", "1")]) == 2
    assert script.paired_gain(rows, "1") == pytest.approx([0.1, 0.11])  # seed 2 has no pair
    for row in rows:
        row.update(metric="auroc", steps="100", batch_size="4", image_size="128", fold="0", seconds="60")
        row["m_accuracy"] = "0.75"
    body = script.section(rows, Path("sweep"), "p.png", ("accuracy",))
    assert "| pretrained | 0.610 ± 0.008 (n=3) |" in body
    assert "`accuracy`" in body and "| scratch | 0.750 ± 0.000 (n=2) |" in body
    with pytest.raises(SystemExit, match="no metric 'kappa'"):
        script.section(rows, Path("sweep"), "p.png", ("kappa",))
    assert "--via" not in body
    # a --via sweep names the segmentation sweep and adds up its training time (60 s x 7 runs)
    for row in rows:
        row.update(
            via_run=f"/x/seg-sweep/{row['method']}/k1_s{row['seed']}", via_steps="600", via_seconds="60"
        )
    via = script.section(rows, Path("sweep"), "p.png")
    assert "in `seg-sweep` (`--via`; 600 steps each, 7 min of segmentation training in all" in via
    assert "100 steps × batch 4 at 128 px" in via and "that fold's held-out subjects" in via
    # a head fitted exactly, evaluated on every subject left out (89-98 of them)
    for row, count in zip(rows, (98, 97, 89, 90, 95, 92, 91), strict=True):
        row.update(steps="0", eval_unused="True", eval_subjects=str(count))
    wide = script.section(rows, Path("sweep"), "p.png")
    assert "the head fitted exactly (no gradient steps) at 128 px" in wide
    assert "every subject the run did not train on (`eval_unused=true`" in wide and "89-98 subjects" in wide
    # k = all leaves out only the held-out fold: a mixed sweep names the k of each set
    mixed = [dict(r, k="all", eval_unused="False", eval_subjects="20") for r in rows[:3]] + rows[3:]
    assert "90-95 subjects) at k = 1, and that fold's held-out subjects at k = all" in script.section(
        mixed, Path("sweep"), "p.png"
    )
    assert "Start weights" not in wide
    # methods that start from given weights (--start) name them, one per seed
    for row in rows:
        start = (
            ""
            if row["method"] == "baseline"
            else f"/x/sax/{row['method']}/kall_s{row['seed']}/model.safetensors"
        )
        row.update(init=start, via_run="")  # a --via sweep's rows name their via runs instead
    started = script.section(rows, Path("sweep"), "p.png")
    assert (
        "Start weights: pretrained from `sax/pretrained/kall_s0/model.safetensors` (one per "
        "seed, 3 in all); scratch from `sax/scratch/kall_s0/model.safetensors` (one per seed, 2 in all); "
        "baseline from random weights."
    ) in started
    # a second sweep of the same task (another budget) keeps the first one's section and plot
    assert script.section_names("sax-seg") == (
        "Few-shot label efficiency: sax-seg (`cmrfm fewshot`)",
        "fewshot_sax-seg.png",
    )
    assert script.section_names("sax-seg", "1000 steps") == (
        "Few-shot label efficiency: sax-seg, 1000 steps (`cmrfm fewshot`)",
        "fewshot_sax-seg_1000-steps.png",
    )


def test_lge_postprocess_filters_islands_and_shifts_the_infarct_class():
    import numpy as np

    bench = _script("lge_postprocess_cv")
    probs = np.zeros((1, 5, 8, 8), np.float32)  # (Z, C, H, W): background everywhere ...
    probs[0, 0] = 1.0
    probs[0, :, 3:5, 3:5] = np.eye(5)[1][:, None, None]  # ... an LV blood pool
    probs[0, :, 2, 3] = np.eye(5)[3]  # scar touching it (subendocardial)
    probs[0, :, 7, 7] = np.eye(5)[3]  # a scar island in the corner
    probs[0, :, 0, 0] = [0.5, 0, 0, 0.3, 0.2]  # background wins unless infarct is boosted
    plain = bench.post_process(probs, 0.0, 0)[0]
    assert plain[2, 3] == plain[7, 7] == 3 and plain[0, 0] == 0
    assert bench.post_process(probs, 1.0, 0)[0][0, 0] == 3  # log 0.3 + 1 > log 0.5
    subendo = bench.post_process(probs, 0.0, 0, subendocardial=True)[0]
    assert subendo[2, 3] == 3 and subendo[7, 7] == 2  # the island becomes myocardium
    sized = bench.post_process(probs, 0.0, 2)[0]
    assert sized[2, 3] == 2 and sized[7, 7] == 2  # both 1-pixel components removed


def test_feature_classifiers_separate_separable_groups():
    import numpy as np

    script = _script("disease_features_cv")
    rng = np.random.default_rng(0)
    centres = np.eye(5) * 6  # five groups, far apart in 5 features
    y = np.repeat(np.arange(5), 8)
    x = centres[y] + rng.normal(0, 0.5, (len(y), 5))
    for classify in script.CLASSIFIERS.values():
        assert (classify(x[::2], y[::2], x[1::2]) == y[1::2]).all()


def test_landmark_benchmark_matches_swapped_points_and_picks_mid_slices(tmp_path):
    import numpy as np

    bench = _script("landmarks_vs_mask")
    truth = np.array([[10.0, 10.0], [20.0, 10.0]])
    swapped = truth[::-1] + np.array([[0.0, 3.0], [0.0, 4.0]])  # order swapped, 3 and 4 px off
    assert bench.matched_error_mm(swapped, truth, 1.5) == pytest.approx(1.5 * 3.5)
    assert np.isnan(bench.matched_error_mm(None, truth, 1.5))
    rows = [{"subject": "a", "phase": "ED", "slice": z} for z in (2, 3, 4, 5, 6)]
    rows += [{"subject": "a", "phase": "ES", "slice": 4}, {"subject": "b", "phase": "ED", "slice": 7}]
    assert bench.mid_ventricular(rows) == {2, 6}  # a: slice 4 (index 2); b: its only ED slice
    assert bench.summary([1.0, 3.0, float("nan")]) == "2.0 / 2.0 (1 without a junction)"
    results = _script("results")
    assert results.named_paths(["x=a/b.safetensors"], "--seg") == {"x": Path("a/b.safetensors")}
    with pytest.raises(SystemExit, match="expected NAME=FILE"):
        results.named_paths(["nameless"], "--seg", "FILE")
    target = tmp_path / "RESULTS.md"
    target.write_text("# Benchmark results\n\n## T\n\nold\n\n## Other\n\nkept\n")
    body = results.publish("T", ["line 1\n", "| a |\n|---|"], write=False, path=target)
    assert body == "line 1\n\n| a |\n|---|"
    assert "old" in target.read_text()  # write=False only prints
    results.publish("T", ["new"], write=True, path=target)
    assert target.read_text() == "# Benchmark results\n\n## T\n\nnew\n\n## Other\n\nkept\n"


def test_shift_robustness_moves_the_image_and_names_the_worst_confusion():
    module = _script("cls_shift_robustness")
    image = np.zeros((1, 16, 16), np.float32)
    image[0, 5, 5] = 1.0
    right = module.shift_image(image, 3, 0.0)  # angle 0: +x (columns)
    down = module.shift_image(image, 2, np.pi / 2)  # pi/2: +y (rows)
    assert right.shape == image.shape and right[0, 5, 8] == pytest.approx(1.0)
    assert down[0, 7, 5] == pytest.approx(1.0)
    items = [{"image": image, "label": 0}, {"image": image, "label": 1}]
    shifted = module.ShiftedItems(items, 4)
    assert shifted[0]["image"].sum().item() == pytest.approx(1.0)  # moved, not lost
    assert not np.allclose(np.asarray(shifted[0]["image"]), image)
    assert module.ShiftedItems(items, 0)[1]["image"] is image  # no shift: the item as prepared
    confusion = np.array([[8, 2, 0], [5, 5, 0], [0, 0, 10]])
    assert module.worst_confusion(confusion, ("cine", "lge", "t1map")) == "lge → cine (5 of 10)"
    assert module.worst_confusion(np.eye(3, dtype=int) * 4, ("a", "b", "c")) == "none"


def test_scar_presence_rule_and_soft_volume_ranking():
    script = _script("fewshot_scar_presence")
    rows = [
        {"present": 1, "ml_pred": 2.0, "ml_soft": 3.0},  # drawn: found
        {"present": 1, "ml_pred": 0.0, "ml_soft": 0.4},  # nothing drawn, some probability
        {"present": 0, "ml_pred": 1.5, "ml_soft": 0.2},  # a false scar drawn
        {"present": 0, "ml_pred": 0.0, "ml_soft": 0.1},
    ]
    scores = script.presence_scores(rows, min_ml=1.0)
    assert scores["accuracy"] == pytest.approx(0.5)  # rows 1 and 4 right
    assert scores["balanced_accuracy"] == pytest.approx(0.5)
    # soft volumes {3, 0.4} vs {0.2, 0.1}: every positive above every negative
    assert scores["auroc"] == pytest.approx(1.0)
    assert np.isnan(script.presence_scores(rows[:2])["auroc"])  # one class only

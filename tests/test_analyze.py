"""End-to-end tests of ``cmrfm analyze`` with tiny random-init task models (real architecture/export).

The models are untrained, so these tests check plumbing (files, geometry, keys, report, batch
behaviour, privacy), never clinical values; plausibility with trained weights is tested in
``test_analyze_trained.py`` (skipped until ``weights/sax-seg.safetensors`` exists).
"""

from __future__ import annotations

import base64
import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cmrfm.cli import main
from cmrfm.clinical.analyze import FUNCTION_KEYS

#: Keys the issue requires in every measurements.json.
REQUIRED_KEYS = (
    *FUNCTION_KEYS,
    "ed_frame",
    "es_frame",
    "diagnosis",
    "quality",
    "series",
    "warnings",
    "model",
)
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
CLASSIFIERS = ("sequence-cls", "view-cls", "quality-cls")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """Random-init models of every registered analysis task, written by the real exporter."""
    from cmrfm.clinical.bundle import write_random_weights

    folder = tmp_path_factory.mktemp("weights")
    written = write_random_weights(folder, image_size=32, backbone=TINY)
    assert any(p.name == "sax-seg.safetensors" for p in written)
    return folder


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def check_report(folder: Path) -> None:
    """report.html parses and every image is an embedded PNG; PNG figures lie beside it."""
    parser = _Images()
    parser.feed((folder / "report.html").read_text(encoding="utf-8"))
    assert parser.sources, "report has no images"
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
    assert len(list((folder / "figures").glob("*.png"))) >= len(parser.sources)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_example_end_to_end(tmp_path, tiny_weights):
    out = tmp_path / "out"
    code = main(
        ["analyze", "--example", "--out", str(out), "--weights", str(tiny_weights), "--height", "170",
         "--weight", "70", "--sex", "female"]
    )  # fmt: skip
    assert code == 0
    folder = out / "example"
    m = json.loads((folder / "measurements.json").read_text())
    for key in REQUIRED_KEYS:
        assert key in m, key
    assert {s["name"] for s in m["series"]} == {"sax_cine", "2ch_cine", "4ch_cine", "sax_lge"}
    assert all("confidence" in s and s["sequence"] and s["view"] for s in m["series"])
    assert m["lge"]["series"] == "sax_lge" and "infarct_present" in m["lge"]
    assert m["model"]["tasks"]["sax-seg"]["trained"] is False
    assert 0 <= m["ed_frame"] < 25 and 0 <= m["es_frame"] < 25
    assert m["bsa_m2"] == pytest.approx(np.sqrt(170 * 70 / 3600), abs=1e-3)
    assert "lv_edv_ml_m2" in m and m["ranges_sex"] == "female"
    assert isinstance(m["ood"]["flag"], bool)
    from cmrfm.tasks import TASKS

    segmented = ["sax_cine", "sax_lge"] + (["2ch_cine", "4ch_cine"] if "lax-seg" in TASKS.names() else [])
    for name in segmented:
        assert (folder / "seg" / f"{name}_seg.nii.gz").is_file()
        labels = json.loads((folder / "seg" / f"{name}_seg.json").read_text())["label_names"]
        assert labels["1"] == "LV" and labels["2"] == "MYO" and labels["3"] == "RV"
    check_report(folder)
    truth = json.loads((folder / "example_truth.json").read_text())  # the simulator's own numbers
    assert truth["lv_ef_pct"]["measured"] == m["lv_ef_pct"] and truth["diagnosis"]["truth"] == "MINF"
    assert 100 < truth["lv_edv_ml"]["truth"] < 200 and 10 < truth["lv_ef_pct"]["truth"] < 80
    scar = truth["infarct_pct_of_lv_myocardium"]  # the MINF example has a transmural-ish infarct
    assert 3 < scar["truth"] < 60 and scar["measured"] == m["lge"]["infarct_pct_of_lv_myocardium"]
    rows = read_csv(out / "measurements.csv")
    assert [r["study"] for r in rows] == ["example"]
    assert read_csv(out / "failures.csv") == []


def _copy_images_only(src: Path, dst: Path) -> list[Path]:
    """Copies a patient's image NIfTIs (never ``_gt`` labels, never Info.cfg)."""
    dst.mkdir(parents=True)
    copied = []
    for path in sorted(src.glob("*.nii.gz")):
        if "_gt" in path.name:
            continue
        shutil.copy(path, dst / path.name)
        copied.append(dst / path.name)
    return copied


def test_acdc_patients_images_only(tmp_path, tiny_weights, acdc_root):
    batch = tmp_path / "batch"
    inputs = {}
    for patient in ("patient001", "patient002"):
        inputs[patient] = _copy_images_only(acdc_root / patient, batch / patient)
    assert not list(batch.rglob("*_gt*")) and not list(batch.rglob("Info.cfg"))
    out = tmp_path / "out"
    assert main(["analyze", str(batch), "--out", str(out), "--weights", str(tiny_weights)]) == 0
    rows = read_csv(out / "measurements.csv")
    assert sorted(r["study"] for r in rows) == ["patient001", "patient002"]
    for patient, files in inputs.items():
        folder = out / patient
        m = json.loads((folder / "measurements.json").read_text())
        for key in REQUIRED_KEYS:
            assert key in m, key
        assert m["ed_frame"] in (0, 1) and m["es_frame"] in (0, 1)
        for image in files:
            seg = folder / "seg" / image.name.replace(".nii.gz", "_seg.nii.gz")
            src, out_img = nib.load(str(image)), nib.load(str(seg))
            assert out_img.shape == src.shape
            np.testing.assert_allclose(out_img.affine, src.affine, atol=1e-6)
            assert set(np.unique(np.asarray(out_img.dataobj))) <= {0, 1, 2, 3}
        check_report(folder)


def test_acdc_folder_is_read_without_labels(acdc_root):
    from cmrfm.clinical.analyze import load_for_analysis

    study = load_for_analysis(acdc_root / "patient001")
    assert all(not s.labels for s in study.series)
    assert study.clinical.group is None and study.clinical.ed_frame is None
    assert not any("_gt" in p for s in study.series for p in s.source_paths)


def _write_nifti_study(folder: Path, seed: int) -> Path:
    """A small synthetic SAX stack (bright disc in noise) as a NIfTI study folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[:48, :48]
    frames = []
    for t, radius in enumerate((10, 7)):
        disc = ((yy - 24) ** 2 + (xx - 24) ** 2 < radius**2).astype(np.float32)
        vol = np.stack([disc * (1 - 0.1 * z) for z in range(4)], axis=-1) * 300  # (X, Y, Z)
        frames.append(vol + rng.normal(0, 10, vol.shape))
        affine = np.diag([1.8, 1.8, 8.0, 1.0])
        nib.save(
            nib.Nifti1Image(frames[-1].astype(np.float32), affine), folder / f"s_frame{t + 1:02d}.nii.gz"
        )
    return folder


def test_batch_with_corrupt_study_reports_it(tmp_path, tiny_weights):
    root = tmp_path / "studies"
    _write_nifti_study(root / "good", 0)
    bad = root / "bad"
    bad.mkdir(parents=True)
    (bad / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08not really a nifti")
    out = tmp_path / "out"
    code = main(["analyze", str(root), "--out", str(out), "--weights", str(tiny_weights), "--no-report"])
    assert code != 0
    assert [r["study"] for r in read_csv(out / "measurements.csv")] == ["good"]
    failures = read_csv(out / "failures.csv")
    assert [f["study"] for f in failures] == ["bad"] and failures[0]["reason"]
    assert (out / "good" / "measurements.json").is_file()


def test_existing_output_folder_is_never_overwritten(tmp_path, tiny_weights):
    study = _write_nifti_study(tmp_path / "s1", 1)
    out = tmp_path / "out"
    args = ["analyze", str(study), "--out", str(out), "--weights", str(tiny_weights), "--no-report"]
    assert main(args) == 0
    first = (out / "s1" / "measurements.json").read_text()
    assert main(args) == 0
    assert (out / "s1" / "measurements.json").read_text() == first
    second = json.loads((out / "s1-2" / "measurements.json").read_text())
    assert any("s1-2" in w for w in second["warnings"])


def test_missing_weights_skip_steps_without_numbers(tmp_path):
    study = _write_nifti_study(tmp_path / "s2", 2)
    empty = tmp_path / "no_weights"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["analyze", str(study), "--out", str(out), "--weights", str(empty)]) == 0
    m = json.loads((out / "s2" / "measurements.json").read_text())
    assert all(m[key] is None for key in FUNCTION_KEYS)
    assert m["diagnosis"]["label"] is None
    assert any("sax-seg" in w for w in m["warnings"])
    assert any("quality" in w for w in m["warnings"])
    assert m["model"]["tasks"] == {}
    assert (out / "s2" / "report.html").is_file()


def test_unusable_weights_file_is_a_warning(tmp_path):
    from cmrfm.clinical.bundle import ModelBundle

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "sax-seg.safetensors").write_bytes(b"garbage")
    bundle = ModelBundle.load(folder)
    assert not bundle.has("sax-seg") and "sax-seg" in bundle.errors
    assert "error" in bundle.versions()["sax-seg"]


def test_tta_adds_flip_variance(tiny_weights):
    from cmrfm.clinical.bundle import ModelBundle

    images = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    plain = ModelBundle.load(tiny_weights, tasks=["sax-seg"], jitter=False).segment("sax-seg", images)
    tta = ModelBundle.load(tiny_weights, tasks=["sax-seg"], tta=True, jitter=False).segment("sax-seg", images)
    assert plain.tta_variance is None and tta.tta_variance.shape == tta.probs.shape
    assert plain.probs.shape == (3, 4, 32, 32)
    np.testing.assert_allclose(plain.probs.sum(axis=1), 1.0, atol=1e-4)
    assert (plain.level_variance >= 0).all()
    # the OOD statistic is the plain pass's entropy with or without TTA (cards calibrate on it)
    np.testing.assert_allclose(tta.ood_entropy(), plain.ood_entropy(), atol=1e-3)
    np.testing.assert_allclose(plain.ood_entropy(), plain.entropy())
    assert not np.allclose(tta.entropy(), tta.ood_entropy(), atol=1e-3)  # the flips' mean differs


def test_lge_segmentation_always_averages_the_flips(tiny_weights):
    from cmrfm.clinical.bundle import ModelBundle
    from cmrfm.tasks import TASKS

    assert TASKS.get("lge-seg").analysis_flips and not TASKS.get("sax-seg").analysis_flips
    images = np.random.default_rng(2).random((2, 32, 32)).astype(np.float32)
    bundle = ModelBundle.load(tiny_weights, tasks=["lge-seg"], jitter=False)  # tta off for the bundle
    flipped = bundle.segment("lge-seg", images)
    assert flipped.tta_variance is not None  # the flips ran anyway
    forced = ModelBundle.load(tiny_weights, tasks=["lge-seg"], tta=True, jitter=False).segment(
        "lge-seg", images
    )
    np.testing.assert_allclose(flipped.probs, forced.probs, atol=1e-5)


def test_heart_zoom_from_the_card_refines_each_volume(tiny_weights, monkeypatch):
    import cmrfm.clinical.bundle as bundle_module
    from cmrfm.clinical.bundle import ModelBundle

    images = np.random.default_rng(4).random((4, 32, 32)).astype(np.float32)
    bundle = ModelBundle.load(tiny_weights, tasks=["lge-seg"], jitter=False)
    calls = []

    def spy(predict, images_t, probs, groups, fill, heart):
        calls.append((list(groups), fill, tuple(heart)))
        second = predict(images_t)  # the bundle's own views on the (here unzoomed) slices
        assert second.shape == probs.shape
        return torch.full_like(probs, 0.2)

    monkeypatch.setattr(bundle_module, "refine_with_zoom", spy)
    plain = bundle.segment("lge-seg", images, groups=[0, 0, 1, 1])
    assert not calls  # the card sets no heart zoom
    bundle.models["lge-seg"].model.task.config.heart_zoom = 0.75
    bundle.segment("lge-seg", images)
    assert calls == [([0, 0, 0, 0], 0.75, (1, 2, 3, 4))]  # no groups: the slices are one volume
    zoomed = bundle.segment("lge-seg", images, groups=[0, 0, 1, 1])
    assert calls[-1] == ([0, 0, 1, 1], 0.75, (1, 2, 3, 4))
    assert np.allclose(zoomed.probs, 0.2)
    np.testing.assert_allclose(zoomed.level_variance, plain.level_variance, atol=1e-6)  # first pass's maps


def test_views_invert_exactly_and_jitter_is_half_a_patch():
    import torch

    from cmrfm.clinical.bundle import View, segmentation_views

    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    for view in (View(), View(flip=(-1,)), View(shift=4), View(flip=(-2,), shift=3)):
        assert torch.equal(view.invert(view.apply(x)), x)
    assert View(shift=4).apply(x)[0, 0, 4, 4] == x[0, 0, 0, 0]
    assert segmentation_views(False, False, 8) == [View()]
    assert segmentation_views(False, True, 8) == [View(), View(shift=4)]
    assert [v.flip for v in segmentation_views(True, True, 16)] == [(), (-1,), (-2,), (-2, -1), ()]
    assert segmentation_views(True, True, 16)[-1].shift == 8


def test_jitter_pass_averages_a_shifted_view(tiny_weights):
    from cmrfm.clinical.bundle import ModelBundle

    images = np.random.default_rng(1).random((2, 32, 32)).astype(np.float32)
    plain = ModelBundle.load(tiny_weights, tasks=["sax-seg"], jitter=False).segment("sax-seg", images)
    jitter = ModelBundle.load(tiny_weights, tasks=["sax-seg"]).segment("sax-seg", images)
    assert jitter.tta_variance is not None and jitter.probs.shape == plain.probs.shape
    np.testing.assert_allclose(jitter.probs.sum(axis=1), 1.0, atol=1e-4)
    assert not np.allclose(jitter.probs, plain.probs, atol=1e-4)
    np.testing.assert_allclose(jitter.ood_entropy(), plain.entropy(), atol=1e-3)  # OOD from the plain pass


def test_single_4d_nifti_file(tmp_path, tiny_weights):
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:40, :40]
    frames = []
    for radius in (9, 8, 6, 7, 9):
        disc = ((yy - 20) ** 2 + (xx - 20) ** 2 < radius**2).astype(np.float32) * 200
        frames.append(np.stack([disc] * 4, axis=-1) + rng.normal(0, 5, (40, 40, 4)))
    affine = np.array([[0, -1.6, 0, 30], [1.6, 0, 0, -10], [0, 0, 9.0, 5], [0, 0, 0, 1]])
    path = tmp_path / "cine.nii.gz"
    nib.save(nib.Nifti1Image(np.stack(frames, axis=-1).astype(np.float32), affine), path)
    out = tmp_path / "out"
    code = main(["analyze", str(path), "--out", str(out), "--weights", str(tiny_weights), "--no-report"])
    assert code == 0
    seg = nib.load(str(out / "cine" / "seg" / "cine_seg.nii.gz"))
    assert seg.shape == (40, 40, 4, 5)
    np.testing.assert_allclose(seg.affine, affine, atol=1e-6)
    m = json.loads((out / "cine" / "measurements.json").read_text())
    assert len(m["lv_volume_curve_ml"]) == 5 and m["cine_series"] == "cine"


def test_infarct_presence_threshold_comes_from_the_lge_seg_card(monkeypatch):
    from types import SimpleNamespace

    from cmrfm.clinical import analyze as clinical
    from cmrfm.constants import Label

    monkeypatch.setattr(clinical, "_pixel_area", lambda series: 1.0)
    monkeypatch.setattr(clinical, "_slice_mm", lambda series: 10.0)  # 0.01 mL per voxel
    labels = np.zeros((20, 20, 1, 1), np.uint8)
    labels[:10, :, 0, 0] = Label.MYO
    labels[:4, :10, 0, 0] = Label.INFARCT  # 40 voxels = 0.4 mL of scar
    run = SimpleNamespace(labels=labels)
    series = SimpleNamespace(name="lge")

    def assess(card):
        models = {"lge-seg": SimpleNamespace(card=card)}
        bundle = SimpleNamespace(models=models, has=lambda task: task in models)
        return clinical.lge_assessment(run, series, bundle, cache=None)

    default = assess({})
    assert default["infarct_ml"] == pytest.approx(0.4) and default["infarct_present"] is False
    assert f"{clinical.MIN_INFARCT_ML:g} mL" in default["infarct_present_source"]
    calibrated = assess({"infarct_present_min_ml": 0.3})
    assert calibrated["infarct_present"] is True and "0.3 mL" in calibrated["infarct_present_source"]
    assert calibrated["infarct_pct_of_lv_myocardium"] == pytest.approx(20.0)  # 40 of 200 voxels


def test_reidentify_moves_only_classifier_crops_far_from_the_heart(tmp_path, tiny_weights):
    from cmrfm.clinical import analyze as clinical
    from cmrfm.clinical.bundle import ModelBundle

    bundle = ModelBundle.load(tiny_weights)
    study = clinical.load_for_analysis(_write_nifti_study(tmp_path / "s", 3))
    series = study.series[0]
    cache = clinical.PreparedCache()
    first = clinical.identify_series(series, bundle, cache, [])
    assert first.crop == "first guess" and first.summary()["classified_on"] == "first guess"
    config = bundle.models["sequence-cls"].preprocess
    before = cache.get(series, config, frames=[0]).record
    mm = before.in_spacing[0]  # 1.8 mm pixels
    near = (before.centre[0] + 5.0 / mm, before.centre[1])  # 5 mm away: the first reading stands
    assert set(first.read_at) == set(CLASSIFIERS) and first.read_at["view-cls"] == before.centre
    assert clinical.reidentify_on_heart(first, near, bundle, cache, []) is None
    assert cache.get(series, config, frames=[0]).record.centre == before.centre
    far = (before.centre[0] + 4.0, before.centre[1] + 3.0)  # 5 source pixels = 9 mm away
    again = clinical.reidentify_on_heart(first, far, bundle, cache, [])
    assert again is not None and again.crop == "segmented heart"
    assert all(centre == pytest.approx(far) for centre in again.read_at.values())
    for task_id in CLASSIFIERS:
        record = cache.get(series, bundle.models[task_id].preprocess, frames=[0]).record
        assert record.centre == pytest.approx(far) and record.centre_source == "segmentation"


def test_series_misread_off_centre_is_read_again_and_resegmented(tmp_path, tiny_weights, monkeypatch):
    """A cine stack read as LGE on the first-guess crop is read as cine on its segmented heart,
    then segmented by sax-seg (not lge-seg) and reported with a warning saying why."""
    from cmrfm.clinical import analyze as clinical
    from cmrfm.clinical.bundle import ModelBundle
    from cmrfm.constants import Sequence, View

    bundle = ModelBundle.load(tiny_weights)
    study = clinical.load_for_analysis(_write_nifti_study(tmp_path / "s", 4))
    real_centre = clinical.centre_on_prediction

    def centre_off_by_20mm(series, task_id, bundle, cache, passes=2):
        real_centre(series, task_id, bundle, cache, passes)
        record = cache.get(series, bundle.models[task_id].preprocess, frames=[0]).record
        return (record.centre[0] + 20.0 / record.in_spacing[0], record.centre[1])

    def classifier_right_only_when_centred(series, bundle, cache, warnings):
        record = cache.get(series, bundle.models["sequence-cls"].preprocess, frames=[0]).record
        centred = record.centre_source == "segmentation"
        info = clinical.SeriesInfo(series, Sequence.CINE if centred else Sequence.LGE, View.SAX, "model")
        info.read_at["sequence-cls"] = record.centre
        return info

    monkeypatch.setattr(clinical, "centre_on_prediction", centre_off_by_20mm)
    monkeypatch.setattr(clinical, "identify_series", classifier_right_only_when_centred)
    result = clinical.analyze(study, bundle)
    assert all(info.sequence == Sequence.CINE and info.crop == "segmented heart" for info in result.infos)
    assert [run.task_id for run in result.runs.values()] == ["sax-seg"]  # ED+ES as one pseudo-cine
    assert not result.lge and "lge" not in result.measurements
    assert result.measurements["lv_edv_ml"] is not None
    reread = [w for w in result.measurements["warnings"] if "segmented heart" in w]
    assert len(reread) == len(study.series) and "first read as lge sax" in reread[0]
    assert all(s["classified_on"] == "segmented heart" for s in result.measurements["series"])

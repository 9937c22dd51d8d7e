"""Simulated-cohort tasks: cohort cache, item labels, landmark pixel conventions, motion grades."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from cmrfm.constants import Label
from cmrfm.engine.finetune import build_task
from cmrfm.errors import ConfigError
from cmrfm.tasks.augment import AugmentConfig
from cmrfm.tasks.items import ItemDataset, phantom_slice
from cmrfm.tasks.landmarks import LAX_SLOTS, SAX_SLOTS, lax_landmark_item
from cmrfm.tasks.motion_artefact import corrupt_motion
from cmrfm.tasks.quality_cls import GRADES, cycled_grades
from cmrfm.tasks.simcohort import CohortSpec, load_cohort, simulate_subject, tiny_cohort, tiny_spec

#: A single subject at 3 mm pixels: coarse enough to be quick, fine enough to check landmarks.
MEDIUM = CohortSpec(
    subjects=1,
    n_frames=3,
    size=64,
    spacing_mm=3.0,
    sim_overrides=(
        "imaging.matrix=[96,96]",
        "imaging.fov_mm=[288,288]",
        "imaging.supersample=1",
        "imaging.depth_samples=1",
        "imaging.n_coils=2",
    ),
)


@pytest.fixture(scope="module")
def medium():
    return load_cohort(MEDIUM, use_cache=False, progress=False)[0]


def _distance(mask, labels, point):
    """Distance (pixels) from item point (x = column, y = row) to the nearest pixel of ``labels``."""
    far = ndimage.distance_transform_edt(~np.isin(mask, labels))
    x, y = point
    return float(far[round(float(y)), round(float(x))])


def test_cohort_cache_round_trip_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRFM_CACHE", str(tmp_path))
    spec = tiny_spec(1, 32)
    first = load_cohort(spec, progress=False)[0]
    cached = list((tmp_path / "simulated").glob("cohort-*/sim0000.npz"))
    assert len(cached) == 1
    again = load_cohort(spec, progress=False)[0]  # read back from the cache
    fresh = simulate_subject(0, spec)  # simulated anew
    for other in (again, fresh):
        assert np.array_equal(first.images, other.images) and np.array_equal(first.labels, other.labels)
        assert np.allclose(first.landmarks, other.landmarks, equal_nan=True)
        assert first.rows == other.rows
    sequences = {r["sequence"] for r in first.rows}
    views = {r["view"] for r in first.rows if r["sequence"] == "cine"}
    assert sequences == {"cine", "lge", "t1map", "t2map"} and views == {"sax", "2ch", "3ch", "4ch"}
    assert all(r["grade"] == 1 for r in first.rows if r["sequence"].endswith("map"))
    assert CohortSpec(subjects=2).key() == CohortSpec(subjects=3).key() != CohortSpec(seed=1).key()


def test_lax_landmarks_land_on_their_structures(medium):
    """Apex on the myocardium, hinges at the LV (and LA in 2CH); the transposed reading is worse."""
    true_err, swap_err = [], []
    lax = [k for k, r in enumerate(medium.rows) if r["view"] in ("2ch", "3ch", "4ch")]
    assert lax
    for k in lax:
        mask, marks, valid = medium.labels[k], medium.landmarks[k], medium.landmark_valid[k]
        assert valid.all()
        apex, hinges = marks[2], marks[:2]
        assert _distance(mask, [Label.MYO], apex) <= 1.5
        assert all(_distance(mask, [Label.LV], h) <= 1.5 for h in hinges)
        if medium.rows[k]["view"] == "2ch":
            assert min(_distance(mask, [Label.LA], h) for h in hinges) <= 1.5
        true_err.append(
            _distance(mask, [Label.MYO], apex) + sum(_distance(mask, [Label.LA], h) for h in hinges)
        )
        swap_err.append(
            _distance(mask, [Label.MYO], apex[::-1])
            + sum(_distance(mask, [Label.LA], h[::-1]) for h in hinges)
        )
    assert np.mean(swap_err) > np.mean(true_err) + 2.0


def test_sax_landmarks_sit_at_the_rv_junction(medium):
    sax = [k for k, r in enumerate(medium.rows) if r["view"] == "sax" and medium.landmark_valid[k][:2].all()]
    assert sax
    for k in sax:
        for point in medium.landmarks[k][:2]:
            assert _distance(medium.labels[k], [Label.MYO], point) <= 1.5
            assert _distance(medium.labels[k], [Label.RV], point) <= 1.5


def test_landmark_task_lax_items_follow_augmentation(medium):
    """LAX items put hinges/apex in slots 2-4; a random warp keeps the apex on the warped myocardium."""
    k = next(k for k, r in enumerate(medium.rows) if r["view"] == "4ch")
    item = lax_landmark_item(medium, k)
    assert item["landmark_valid"][list(LAX_SLOTS)].all() and not item["landmark_valid"][list(SAX_SLOTS)].any()
    assert np.allclose(item["landmarks"][list(LAX_SLOTS)], medium.landmarks[k])
    torch.manual_seed(0)
    dataset = ItemDataset([{**item, "mask": medium.labels[k].astype(np.int64)}], True, AugmentConfig())
    for _ in range(5):
        out = dataset[0]
        if out["landmark_valid"][4]:
            assert _distance(out["mask"].numpy(), [Label.MYO], out["landmarks"][4].numpy()) <= 1.5


def test_landmarks_task_trains_sax_and_lax_together():
    task = build_task("landmarks")
    data = task.synthetic_data()
    items = [
        data.make_dataset(data.subjects, False)[i]
        for i in range(len(data.make_dataset(data.subjects, False)))
    ]
    sax = [it for it in items if it["landmark_valid"][list(SAX_SLOTS)].all()]
    lax = [it for it in items if it["landmark_valid"][list(LAX_SLOTS)].all()]
    assert sax and lax and len(sax) + len(lax) == len(items)
    assert set(data.strata) == {"x", "simulator"}
    without = build_task("landmarks", {"lax": False}).synthetic_data()
    assert "simulator" not in without.strata


@pytest.mark.parametrize(
    ("task_id", "key", "names"),
    [
        ("sequence-cls", "sequence", ("cine", "lge", "t1map", "t2map")),
        ("view-cls", "view", ("sax", "2ch", "3ch", "4ch")),
    ],
)
def test_classification_items_carry_the_simulated_truth(task_id, key, names):
    task = build_task(task_id)
    data = task.synthetic_data()
    cohort = {s.subject: s for s in tiny_cohort(4, 32)}
    dataset = data.make_dataset(data.subjects, False)
    seen = set()
    for i in range(len(dataset)):
        item = dataset[i]
        subject = cohort[item["subject"]]
        # find the item in its subject by image identity
        k = next(
            j for j in range(len(subject.rows)) if np.array_equal(subject.images[j], item["image"][0].numpy())
        )
        assert subject.rows[k][key] == names[int(item["label"])]
        if key == "view":
            assert subject.rows[k]["sequence"] == "cine"
        seen.add(int(item["label"]))
    assert seen == set(range(len(names)))


def test_segmentation_tasks_use_their_structures():
    lax = build_task("lax-seg").synthetic_data()
    ds = lax.make_dataset(lax.subjects, False)
    classes = set()
    for i in range(len(ds)):
        classes |= set(np.unique(ds[i]["mask"].numpy()).tolist())
    assert classes == {0, 1, 2, 3, 4, 5}  # background, LV, MYO, RV, LA, RA
    maps = build_task("mapping-seg").synthetic_data()
    ds = maps.make_dataset(maps.subjects, False)
    classes = set()
    for i in range(len(ds)):
        classes |= set(np.unique(ds[i]["mask"].numpy()).tolist())
        assert "map" in ds[i]["volume"]
    assert classes == {0, 1, 2, 3}


def test_motion_corruption_grades():
    rng = np.random.default_rng(0)
    s = phantom_slice(rng, 64)
    image, heart = s["image"], s["mask"] > 0
    clean, _ = corrupt_motion(image, 1, 1.5, np.random.default_rng(1), heart)
    assert np.array_equal(clean, image.astype(np.float32))
    change = {g: [] for g in (2, 3)}
    for seed in range(6):
        for g in (2, 3):
            out, _ = corrupt_motion(image, g, 1.5, np.random.default_rng(seed), heart)
            assert out.shape == image.shape and out.dtype == np.float32
            change[g].append(float(np.abs(out - image).mean()))
    assert 0 < np.mean(change[2]) < np.mean(change[3])
    a, _ = corrupt_motion(image, 3, 1.5, np.random.default_rng(7), heart)
    b, _ = corrupt_motion(image, 3, 1.5, np.random.default_rng(7), heart)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="grade"):
        corrupt_motion(image, 4, 1.5, rng)


def test_quality_grades_cycle_and_items_match():
    for subject in ("patient001", "Case_N012", "x"):
        assert set(cycled_grades(subject, 3)) == set(GRADES)
    data = build_task("quality-cls").synthetic_data()
    dataset = data.make_dataset(data.subjects, False)
    labels = {int(dataset[i]["label"]) for i in range(len(dataset))}
    assert labels == {0, 1, 2}
    first = dataset[len(dataset) - 1]["image"]
    assert torch.equal(first, dataset[len(dataset) - 1]["image"])  # corruption is deterministic


def test_quality_cohort_draws_the_configured_grade_mix():
    task = build_task("quality-cls")
    assert task.sim_overrides() == ("artefact.grade_probs=[1.0,1.0,1.0]",)
    only_severe = build_task("quality-cls", {"sim_grade_probs": [0, 0, 1]}).sim_overrides()
    tiny = tiny_spec(1, 32)
    spec = CohortSpec(
        subjects=1,
        n_frames=3,
        size=32,
        spacing_mm=tiny.spacing_mm,
        sim_overrides=tiny.sim_overrides + only_severe,
    )
    assert spec.key() != tiny.key()  # its own cache folder
    subject = simulate_subject(0, spec)
    grades = {r["grade"] for r in subject.rows if r["sequence"] in ("cine", "lge")}
    assert grades == {3}
    with pytest.raises(ConfigError, match="sim_grade_probs"):
        build_task("quality-cls", {"sim_grade_probs": [1, 1]}).sim_overrides()


def test_quality_real_datasets_are_configurable():
    assert [s.name for s in build_task("quality-cls").real_sources] == ["acdc"]
    both = build_task("quality-cls", {"real_datasets": ["acdc", "emidec"]})
    assert [s.name for s in both.real_sources] == ["acdc", "emidec"]
    with pytest.raises(ConfigError, match="unknown \\['mnms'\\]"):
        build_task("quality-cls", {"real_datasets": ["mnms"]}).real_sources  # noqa: B018

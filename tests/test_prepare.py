"""``prepare_dataset`` and ``PreparedCache``: synthetic ACDC-shaped data, real ACDC/EMIDEC subsets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrfm.cli import main as cli_main
from cmrfm.constants import Label
from cmrfm.data.adapters.acdc import AcdcAdapter
from cmrfm.data.cache import MANIFEST_COLUMNS, PreparedCache, TorchPreparedDataset
from cmrfm.data.prepare import PrepareConfig, prepare_dataset
from cmrfm.data.preprocess import invert_mask
from cmrfm.errors import ConfigError, InputError

SHAPE = (40, 36, 4)
SPACING = (2.0, 2.0, 8.0)  # coarser than the 1.5 mm reference: label inverse is exact


def _labels(radius: float) -> np.ndarray:
    """ACDC ids (1 RV, 2 MYO, 3 LV) of a small heart."""
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    r = np.hypot(x - 20, y - 18)
    plane = np.zeros(SHAPE[:2], np.uint8)
    plane[np.hypot(x - 30, y - 18) < 5] = 1
    plane[r < radius + 3] = 2
    plane[r < radius] = 3
    plane = np.repeat(plane[:, :, None], SHAPE[2], axis=2)
    plane[..., 0] = 0  # a basal slice without labels
    return plane


def write_acdc(root: Path, n: int = 3, with_4d: int | None = None) -> list[Path]:
    """``n`` ACDC-shaped patients (ED frame 1, ES frame 3 of 4); patient ``with_4d`` gets a 4D cine."""
    folders = []
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    for i in range(1, n + 1):
        folder = root / f"patient{i:03d}"
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 3\nGroup: {['NOR', 'DCM', 'RV'][i % 3]}\nNbFrame: 4\n")
        frames = {}
        for number, radius in ((1, 8.0), (3, 5.0)):
            labels = _labels(radius)
            image = (np.array([20, 180, 60, 230], np.int16)[labels] + i).astype(np.int16)
            frames[number] = image
            nib.save(nib.Nifti1Image(image, affine), str(folder / f"patient{i:03d}_frame{number:02d}.nii.gz"))
            nib.save(
                nib.Nifti1Image(labels, affine), str(folder / f"patient{i:03d}_frame{number:02d}_gt.nii.gz")
            )
        if with_4d == i:
            cine = np.stack([frames[1], frames[1], frames[3], frames[3]], axis=-1)
            nib.save(nib.Nifti1Image(cine, affine), str(folder / f"patient{i:03d}_4d.nii.gz"))
        folders.append(folder)
    return folders


def test_prepare_and_read_back(tmp_path):
    folders = write_acdc(tmp_path / "acdc", n=3)
    (folders[1] / "patient002_frame03.nii.gz").write_bytes(b"corrupt")
    report = prepare_dataset("acdc", tmp_path / "acdc", tmp_path / "cache", ["size=64"], progress=False)
    assert (report.n_studies, report.n_series, report.n_items) == (2, 2, 2 * 2 * SHAPE[2])
    assert report.n_labelled == report.n_items
    assert [study for study, _ in report.failures] == ["patient002"]
    assert "NIfTI" in report.failures[0][1]
    assert "2 studies" in report.describe() and "patient002" in report.describe()

    cache = PreparedCache(tmp_path / "cache")
    assert len(cache) == 16 and cache.size == 64
    assert cache.studies() == ["patient001", "patient003"]
    item = cache[1]
    assert item["image"].shape == (64, 64) and item["image"].dtype == np.float32
    assert item["label"].dtype == np.uint8
    meta = item["meta"]
    assert set(MANIFEST_COLUMNS) == set(meta)
    assert (meta["study"], meta["slice"], meta["frame"], meta["phase"]) == ("patient001", 1, 0, "ED")
    assert meta["labels_present"] == ["LV", "MYO", "RV"] and meta["group"] == "DCM"
    assert (meta["sequence"], meta["view"], meta["spacing_x"], meta["spacing_known"]) == (
        "cine",
        "sax",
        2.0,
        True,
    )
    assert cache[0]["meta"]["labels_present"] == []  # the unlabelled basal slice
    # mapped to internal ids: the bright region is LV
    assert item["image"][item["label"] == Label.LV].mean() > item["image"][item["label"] == Label.MYO].mean()
    # the record maps a cached label back onto the source grid exactly
    source = AcdcAdapter.load_study(folders[0]).series[0]
    np.testing.assert_array_equal(invert_mask(item["label"], cache.record(1)), source.labels[0][:, :, 1])

    view = pickle.loads(pickle.dumps(cache.filter(study="patient003")))
    assert len(view) == 8 and isinstance(view._images, np.memmap)
    np.testing.assert_array_equal(view[0]["image"], cache[8]["image"])
    assert cache.record(1) is cache.record(2)  # one parsed record per series

    es = cache.filter(phase="ES", study=["patient003"])
    assert len(es) == 4 and {r["frame"] for r in es.rows} == {1}
    assert len(cache.filter(labels_present=lambda v: "LV" in v)) == 12
    assert len(cache.subset_studies(["patient001"])) == 8
    assert len(cache.filter(lambda row: row["slice"] == 0)) == 4
    with pytest.raises(KeyError):
        cache.filter(nope=1)
    info = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert info["config"]["size"] == 64 and info["n_studies"] == 2
    assert not list(tmp_path.glob(".cache.partial-*"))


def test_all_frames_and_labelled_default(tmp_path):
    write_acdc(tmp_path / "acdc", n=2, with_4d=2)
    labelled = prepare_dataset("acdc", tmp_path / "acdc", tmp_path / "a", ["size=24"], progress=False)
    assert labelled.n_items == 2 * 2 * SHAPE[2]
    everything = prepare_dataset(
        "acdc", tmp_path / "acdc", tmp_path / "b", ["size=24", "all_frames=true"], progress=False
    )
    assert everything.n_items == (2 + 4) * SHAPE[2]
    cache = PreparedCache(tmp_path / "b")
    four_d = cache.filter(study="patient002")
    assert sorted({(r["frame"], r["phase"], r["labelled"]) for r in four_d.rows}) == [
        (0, "ED", True),
        (1, "other", False),
        (2, "ES", True),
        (3, "other", False),
    ]
    assert four_d.filter(labelled=False)[0]["label"] is None


def test_output_folder_is_protected(tmp_path):
    write_acdc(tmp_path / "acdc", n=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        prepare_dataset("acdc", tmp_path / "acdc", out, progress=False)
    with pytest.raises(InputError, match="not a cmrfm cache"):
        prepare_dataset("acdc", tmp_path / "acdc", out, overwrite=True, progress=False)
    assert (out / "precious.txt").read_text() == "user data"

    cache = tmp_path / "cache"
    prepare_dataset("acdc", tmp_path / "acdc", cache, ["size=16"], progress=False)
    with pytest.raises(InputError, match="--overwrite"):
        prepare_dataset("acdc", tmp_path / "acdc", cache, progress=False)
    prepare_dataset("acdc", tmp_path / "acdc", cache, ["size=24"], overwrite=True, progress=False)
    assert PreparedCache(cache).size == 24


def test_bad_inputs(tmp_path):
    write_acdc(tmp_path / "acdc", n=1)
    with pytest.raises(ConfigError, match="unknown config key"):
        prepare_dataset("acdc", tmp_path / "acdc", tmp_path / "c", ["nope=1"], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no acdc studies"):
        prepare_dataset("acdc", tmp_path / "empty", tmp_path / "d", progress=False)
    with pytest.raises(InputError, match="does not exist"):
        prepare_dataset("acdc", tmp_path / "missing", tmp_path / "d", progress=False)
    with pytest.raises(InputError, match="not a prepared cache"):
        PreparedCache(tmp_path / "acdc")
    assert PrepareConfig().image_dtype == "float16"


def test_cli_prepare(tmp_path, capsys):
    write_acdc(tmp_path / "acdc", n=2)
    args = [
        "data",
        "prepare",
        "acdc",
        "--root",
        str(tmp_path / "acdc"),
        "--out",
        str(tmp_path / "c"),
        "size=16",
    ]
    assert cli_main(args) == 0
    assert "16 items" in capsys.readouterr().out
    assert cli_main(args) == 2  # refuses to overwrite: one clear error line
    assert "--overwrite" in capsys.readouterr().err


def test_torch_dataset(tmp_path):
    torch = pytest.importorskip("torch")
    write_acdc(tmp_path / "acdc", n=1, with_4d=1)
    prepare_dataset("acdc", tmp_path / "acdc", tmp_path / "c", ["size=16", "all_frames=1"], progress=False)
    dataset = TorchPreparedDataset(PreparedCache(tmp_path / "c"))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=False)))
    assert batch["image"].shape == (8, 1, 16, 16) and batch["label"].shape == (8, 16, 16)
    assert batch["label"].dtype == torch.int64 and batch["has_label"].dtype == torch.bool


@pytest.mark.slow
@pytest.mark.realdata
def test_real_acdc_subset(acdc_root, tmp_path):
    report = prepare_dataset("acdc", acdc_root, tmp_path / "acdc", ["max_studies=10"], progress=False)
    assert report.failures == [] and report.n_studies == 10
    cache = PreparedCache(tmp_path / "acdc")
    assert len(cache) == report.n_items == report.n_labelled
    assert set(cache.column("phase")) == {"ED", "ES"}
    for i in range(0, len(cache), 17):
        item = cache[i]
        assert np.isfinite(item["image"]).all() and -1 < np.median(item["image"]) < 1
    with_heart = cache.filter(labels_present=lambda v: {"LV", "MYO"} <= set(v))
    assert len(with_heart) > 0.6 * len(cache)
    # labels of every heart slice sit inside the crop (no structure touches the border)
    for i in range(len(with_heart)):
        label = with_heart[i]["label"]
        assert not (label[0].any() or label[-1].any() or label[:, 0].any() or label[:, -1].any())


@pytest.mark.slow
@pytest.mark.realdata
def test_real_emidec(emidec_root, tmp_path):
    report = prepare_dataset("emidec", emidec_root, tmp_path / "emidec", progress=False)
    assert report.failures == [] and report.n_studies == 85 and report.n_items == 596
    cache = PreparedCache(tmp_path / "emidec")
    assert cache.column("spacing_known")[0] is False
    infarct = cache.filter(infarct=True)
    assert len(infarct.studies()) == 67
    assert any("infarct" in r["labels_present"] for r in infarct.rows)
    assert not any("infarct" in r["labels_present"] for r in cache.filter(infarct=False).rows)


def test_partly_contoured_frames_mark_only_contoured_slices(tmp_path, sunnybrook_root):
    from cmrfm.data.cache import PreparedCache
    from cmrfm.data.prepare import prepare_dataset

    prepare_dataset("sunnybrook", sunnybrook_root, tmp_path / "sb", progress=False)
    cache = PreparedCache(tmp_path / "sb")
    labelled = cache.filter(labelled=True)
    assert 0 < len(labelled) < len(cache.filter(frame=lambda f: f in set(labelled.column("frame"))))
    # every slice still marked labelled carries an LV contour
    assert all("LV" in row["labels_present"] for row in labelled.rows)

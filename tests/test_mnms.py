"""M&Ms adapter on tiny synthetic M&Ms- and M&Ms-2-shaped folders (no real M&Ms data here)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrfm.constants import Group, Label, Sequence, View
from cmrfm.data.adapters.mnms import MnmsAdapter
from cmrfm.errors import InputError
from cmrfm.io.loader import detect_adapter, load_studies

SHAPE = (20, 24, 3)
N_FRAMES = 6
CSV_NAME = "201014_M&Ms_Dataset_Information_-_opendataset.csv"


def _gt(lv_radius: float) -> np.ndarray:
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    r = np.hypot(x - 8, y - 12)
    plane = np.zeros(SHAPE[:2], np.uint8)
    plane[np.hypot(x - 15, y - 12) < 3] = 3  # M&Ms RV
    plane[r < lv_radius + 2] = 2
    plane[r < lv_radius] = 1  # M&Ms LV
    return np.repeat(plane[:, :, None], SHAPE[2], axis=2)


def _save(array: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([1.3, 1.3, 9.0, 1.0])), str(path))


def write_subject(root: Path, code: str, ed: int, es: int, labelled: bool = True, split="Training") -> Path:
    folder = root / split / ("Labeled" if labelled else "Unlabeled") / code
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cine = rng.integers(0, 50, (*SHAPE, N_FRAMES)).astype(np.int16)
    gt = np.zeros((*SHAPE, N_FRAMES), np.uint8)
    gt[..., ed] = _gt(4.0)
    gt[..., es] = _gt(2.5)
    cine[gt == 1] += 200
    _save(cine, folder / f"{code}_sa.nii.gz")
    if labelled:
        _save(gt, folder / f"{code}_sa_gt.nii.gz")
    return folder


def write_csv(root: Path, rows: list[dict[str, str]]) -> None:
    columns = ["External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Pathology"]
    with (root / CSV_NAME).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def test_layout_with_csv(tmp_path):
    a = write_subject(tmp_path, "A0S9V9", ed=0, es=3)
    b = write_subject(tmp_path, "B1C2D3", ed=4, es=1, labelled=False, split="Testing")
    write_csv(
        tmp_path,
        [
            {"External code": "A0S9V9", "VendorName": "Siemens", "Vendor": "A", "Centre": "1", "ED": "0",
             "ES": "3", "Pathology": "HCM"},
            {"External code": "B1C2D3", "VendorName": "Philips", "Vendor": "B", "Centre": "2", "ED": "4",
             "ES": "1", "Pathology": "HHD"},
        ],
    )  # fmt: skip
    assert MnmsAdapter.list_studies(tmp_path) == [b, a]  # sorted: Testing < Training
    assert detect_adapter(tmp_path) == (MnmsAdapter, False)
    assert detect_adapter(a) == (MnmsAdapter, True)

    study = MnmsAdapter.load_study(a)
    (series,) = study.series
    assert series.shape == (*SHAPE, N_FRAMES)
    assert (series.sequence, series.view) == (Sequence.CINE, View.SAX)
    assert series.metadata["vendor"] == "Siemens" and series.metadata["centre"] == "1"
    assert (study.clinical.ed_frame, study.clinical.es_frame) == (0, 3)
    assert sorted(series.labels) == [0, 3]
    assert study.clinical.group is Group.HCM
    ed = series.labels[0]
    assert np.count_nonzero(ed == Label.LV) > np.count_nonzero(series.labels[3] == Label.LV)
    assert series.image[..., 0][ed == Label.LV].mean() > series.image[..., 0][ed == Label.MYO].mean()
    assert {int(v) for v in np.unique(ed)} == {0, Label.LV, Label.MYO, Label.RV}

    unlabelled = MnmsAdapter.load_study(b)
    assert unlabelled.series[0].labels == {}
    assert (unlabelled.clinical.ed_frame, unlabelled.clinical.es_frame) == (4, 1)
    assert unlabelled.clinical.group is None and unlabelled.clinical.extra["pathology"] == "HHD"
    assert unlabelled.series[0].metadata["vendor"] == "Philips"


def test_ed_es_from_labels_without_csv(tmp_path):
    folder = write_subject(tmp_path, "C0D0E0", ed=5, es=2)
    study = MnmsAdapter.load_study(folder)
    assert (study.clinical.ed_frame, study.clinical.es_frame) == (5, 2)  # ED = the larger LV
    assert "vendor" not in study.series[0].metadata
    images_only = MnmsAdapter.load_study(folder, with_labels=False)
    assert images_only.series[0].labels == {} and images_only.clinical.ed_frame == 5


def test_csv_disagreeing_with_labels(tmp_path):
    folder = write_subject(tmp_path, "A0S9V9", ed=0, es=3)
    write_csv(tmp_path, [{"External code": "A0S9V9", "ED": "1", "ES": "3"}])
    with pytest.raises(InputError, match="carry no labels"):
        MnmsAdapter.load_study(folder)
    write_csv(tmp_path, [{"External code": "A0S9V9", "ED": "9", "ES": "3"}])
    with pytest.raises(InputError, match="outside"):
        MnmsAdapter.load_study(folder)


def test_bad_files_reported(tmp_path):
    write_subject(tmp_path, "A0A0A0", ed=0, es=3)
    bad = write_subject(tmp_path, "B0B0B0", ed=0, es=3)
    (bad / "B0B0B0_sa_gt.nii.gz").write_bytes(b"garbage")
    results = load_studies(tmp_path, "mnms")
    assert results[0].study is not None
    assert results[1].study is None and "NIfTI" in results[1].error
    three_d = write_subject(tmp_path, "C0C0C0", ed=0, es=3)
    _save(np.zeros(SHAPE, np.int16), three_d / "C0C0C0_sa.nii.gz")
    with pytest.raises(InputError, match="expected a 4D image"):
        MnmsAdapter.load_study(three_d)


def test_mnms2_layout(tmp_path):
    folder = tmp_path / "dataset" / "001"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    cine = rng.integers(0, 300, (*SHAPE, N_FRAMES)).astype(np.int16)
    _save(cine, folder / "001_SA_CINE.nii.gz")
    for phase, t, radius in (("ED", 2, 4.0), ("ES", 4, 2.5)):
        _save(cine[..., t], folder / f"001_SA_{phase}.nii.gz")
        _save(_gt(radius), folder / f"001_SA_{phase}_gt.nii.gz")
    (tmp_path / "dataset_information.csv").write_text("SUBJECT_CODE,DISEASE,VENDOR\n001,DCM,GE\n")
    assert MnmsAdapter.list_studies(tmp_path) == [folder]
    study = MnmsAdapter.load_study(folder)
    (series,) = study.series
    assert (study.clinical.ed_frame, study.clinical.es_frame) == (2, 4)
    assert sorted(series.labels) == [2, 4]
    assert study.clinical.group is Group.DCM and series.metadata["vendor"] == "GE"

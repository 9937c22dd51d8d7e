"""EMIDEC adapter: synthetic PNG folders (orientation, mapping, errors) and the real set when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmrfm.constants import Label, Sequence, View
from cmrfm.data.adapters.emidec import EMIDEC_TO_INTERNAL, EmidecAdapter
from cmrfm.errors import InputError
from cmrfm.io.loader import detect_adapter, load_studies

ROWS, COLS = 24, 32  # deliberately not square so a transposition shows


def write_case(root: Path, case: str, n_slices: int = 3, infarct: bool = False) -> None:
    """PNG slices of one case in root/train and masks in root/trainannot (EMIDEC ids)."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "trainannot").mkdir(parents=True, exist_ok=True)
    for z in range(n_slices):
        mask = np.zeros((ROWS, COLS), np.uint8)  # (rows, cols)
        mask[4:12, 6:20] = 2  # myocardium block
        mask[6:10, 9:17] = 1  # LV cavity inside it
        if infarct:
            mask[4:6, 6:10] = 3
            mask[4, 6] = 4
        image = (mask * 40 + z).astype(np.uint8)
        image[0, COLS - 1] = 255  # marker: top-right pixel (row 0, last column)
        Image.fromarray(image).save(root / "train" / f"{case}_slice{z:03d}.png")
        Image.fromarray(mask).save(root / "trainannot" / f"{case}_slice{z:03d}.png")


def test_case_paths_and_detection(tmp_path):
    write_case(tmp_path, "Case_N001")
    write_case(tmp_path, "Case_P002", infarct=True)
    studies = EmidecAdapter.list_studies(tmp_path)
    assert studies == [tmp_path / "train" / "Case_N001", tmp_path / "train" / "Case_P002"]
    assert EmidecAdapter.list_studies(tmp_path / "train") == studies
    assert detect_adapter(tmp_path) == (EmidecAdapter, False)
    assert EmidecAdapter.is_study(tmp_path / "train" / "Case_P002_slice001.png")
    assert not EmidecAdapter.is_study(tmp_path / "trainannot" / "Case_P002")


def test_orientation_mapping_and_clinical(tmp_path):
    write_case(tmp_path, "Case_P002", n_slices=4, infarct=True)
    study = EmidecAdapter.load_study(tmp_path / "train" / "Case_P002")
    (series,) = study.series
    assert series.shape == (COLS, ROWS, 4, 1)  # X = column, Y = row
    assert series.image[COLS - 1, 0, 0, 0] == 255  # the marker at (row 0, last column)
    assert [series.image[0, 0, z, 0] for z in range(4)] == [0, 1, 2, 3]  # slices in order
    assert (series.sequence, series.view, series.spacing_known) == (Sequence.LGE, View.SAX, False)
    mask = series.labels[0]
    assert mask[12, 7, 0] == Label.LV and mask[15, 5, 0] == Label.MYO  # (column, row) of the PNG
    assert mask[7, 4, 0] == Label.INFARCT and mask[6, 4, 0] == Label.MVO
    assert series.labels_present() == ["LV", "MYO", "infarct", "MVO"]
    assert study.clinical.infarct is True
    assert study.study_id == "Case_P002"
    assert EMIDEC_TO_INTERNAL[3] == Label.INFARCT


def test_normal_case_and_images_only(tmp_path):
    write_case(tmp_path, "Case_N003")
    for mask in (tmp_path / "trainannot").glob("*.png"):
        mask.unlink()
    with pytest.raises(InputError, match="mask file missing"):
        EmidecAdapter.load_study(tmp_path / "train" / "Case_N003")
    study = EmidecAdapter.load_study(tmp_path / "train" / "Case_N003", with_labels=False)
    assert study.clinical.infarct is False and study.series[0].labels == {}


def test_bad_files(tmp_path):
    write_case(tmp_path, "Case_N004")
    Image.fromarray(np.full((ROWS, COLS), 9, np.uint8)).save(
        tmp_path / "trainannot" / "Case_N004_slice001.png"
    )
    with pytest.raises(InputError, match="unexpected label values"):
        EmidecAdapter.load_study(tmp_path / "train" / "Case_N004")
    (tmp_path / "train" / "Case_N004_slice002.png").write_bytes(b"broken")
    results = load_studies(tmp_path, "emidec")
    assert results[0].study is None and "PNG" in results[0].error
    write_case(tmp_path, "Case_N005")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "train" / "Case_N005_slice001.png")
    with pytest.raises(InputError, match="slice shape"):
        EmidecAdapter.load_study(tmp_path / "train" / "Case_N005")


@pytest.mark.realdata
def test_real_all_cases(emidec_root):
    results = load_studies(emidec_root, "emidec")
    assert [r.error for r in results if r.error] == []
    studies = [r.study for r in results]
    assert len(studies) == 85
    assert sum(s.clinical.infarct for s in studies) == 67  # 67 P, 18 N
    for study in studies:
        (series,) = study.series
        assert series.shape[:2] == (256, 256) and 5 <= series.num_slices <= 10
        present = set(series.labels_present())
        assert {"LV", "MYO"} <= present, study.study_id
        # infarct labels exactly in the P cases; the cavity is brighter than healthy myocardium
        assert ("infarct" in present) == study.clinical.infarct, study.study_id
        image, mask = series.image[..., 0], series.labels[0]
        assert image[mask == Label.LV].mean() > image[mask == Label.MYO].mean(), study.study_id

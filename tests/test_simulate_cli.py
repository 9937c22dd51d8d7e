"""Simulator I/O: cohort on disk read back by the data layer, the CLI, and the in-memory dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmrfm.cli import main
from cmrfm.constants import Group, Label, Sequence, View
from cmrfm.errors import ConfigError, InputError
from cmrfm.io.loader import load_study
from cmrfm.simulate.cohort import write_cohort
from cmrfm.simulate.generator import make_config

TINY = [
    "imaging.matrix=[48,48]",
    "imaging.fov_mm=[240,240]",
    "n_frames=2",
    "imaging.supersample=1",
    "imaging.depth_samples=1",
    "artefact.motion_grade=1",
]


def test_cohort_round_trip_through_nifti_adapter(tmp_path):
    config = make_config([*TINY, "sequences=[cine,lge]", "views=[sax,4ch]"])
    folders = write_cohort(tmp_path / "cohort", 2, seed=1, config=config, pathologies=["HCM", "ARV"])
    assert [f.name for f in folders] == ["sim0000", "sim0001"]
    study = load_study(folders[0])
    assert study.clinical.group == Group.HCM
    assert study.clinical.es_frame == 1
    names = {s.name: s for s in study.series}
    assert set(names) == {"sax_cine", "4ch_cine", "sax_lge"}
    sax = names["sax_cine"]
    assert sax.sequence == Sequence.CINE and sax.view == View.SAX
    assert sorted(sax.labels) == [0, 1]  # every frame labelled
    assert {"LV", "MYO", "RV"} <= set(sax.labels_present())
    assert "LA" in names["4ch_cine"].labels_present()
    assert "landmarks" in sax.metadata and sax.metadata["motion_grade"] == 1
    subject = json.loads((folders[0] / "subject.json").read_text())
    assert subject["group"] == "HCM"
    for key in ("lv_edv_ml", "lv_ef", "rv_ef", "lv_mass_g", "lv_edv_ml_mask", "lv_ef_mask"):
        assert key in subject["truth"]
    side = json.loads((folders[0] / "sax_cine.json").read_text())
    assert side["sequence"] == "cine" and side["view"] == "sax" and len(side["frame_times_ms"]) == 2
    cohort = json.loads((tmp_path / "cohort" / "cohort.json").read_text())
    assert [s["group"] for s in cohort["subjects"]] == ["HCM", "ARV"]


def test_cohort_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        write_cohort(tmp_path, 1, config=make_config(TINY))
    with pytest.raises(ConfigError, match="unknown pathology"):
        write_cohort(tmp_path / "new", 1, config=make_config(TINY), pathologies=["FOO"])


def test_cli_simulate_and_inspect(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["simulate", "--subjects", "1", "--out", str(out), "--seed", "0", "--sequences", "cine",
                 "--views", "sax,2ch", *TINY])  # fmt: skip
    assert code == 0
    assert (out / "sim0000" / "sax_cine.nii.gz").is_file()
    assert (out / "sim0000" / "sax_cine_seg.nii.gz").is_file()
    capsys.readouterr()
    assert main(["data", "inspect", str(out / "sim0000"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {s["name"] for s in report["studies"][0]["series"]} == {"sax_cine", "2ch_cine"}


def test_cli_bad_pathology_is_one_clear_error(tmp_path, capsys):
    code = main(["simulate", "--subjects", "1", "--out", str(tmp_path / "x"), "--pathology", "FOO"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown pathology" in err and "Traceback" not in err
    assert main(["simulate", "--subjects", "1", "--out", str(tmp_path / "y"), "n_frames=0"]) == 2


def test_cli_dicom_geometry(tmp_path):
    out = tmp_path / "d"
    assert (
        main(["simulate", "--subjects", "1", "--out", str(out), "--sequences", "lge", "--dicom", *TINY]) == 0
    )
    nifti = load_study(out / "sim0000").series[0]
    dicom = load_study(out / "dicom" / "sim0000" / "sax_lge")
    series = dicom.series[0]
    assert series.image.shape == nifti.image.shape
    # same voxel grid; the DICOM reader may order slices along the plane normal (reversed)
    assert np.allclose(series.affine[:3, :2], nifti.affine[:3, :2], atol=1e-3)
    assert np.allclose(np.abs(series.affine[:3, 2]), np.abs(nifti.affine[:3, 2]), atol=1e-3)
    same = np.allclose(series.positions(), nifti.positions(), atol=1e-2)
    flipped = np.allclose(series.positions(), nifti.positions()[::-1], atol=1e-2)
    assert same or flipped
    expected = nifti.image if same else nifti.image[:, :, ::-1]
    assert np.allclose(series.image, expected, atol=1e-3 * float(nifti.image.max()))


def test_dataset_items_and_seeding():
    import torch

    from cmrfm.simulate.dataset import SimulatedSliceDataset

    config = make_config([*TINY, "sequences=[cine,lge,t1map]", "views=[sax,2ch,4ch]"])
    data = SimulatedSliceDataset(config, seed=3, length=6, items_per_subject=3)
    items = list(data)
    assert len(items) == 6 == len(data)
    item = items[0]
    assert item["image"].shape == (48, 48) and item["image"].dtype == np.float32
    assert item["mask"].shape == (48, 48)
    assert item["landmarks"].shape == (3, 2) and item["landmark_valid"].dtype == bool
    assert {it["subject_seed"] for it in items[:3]} != {it["subject_seed"] for it in items[3:]}
    again = list(SimulatedSliceDataset(config, seed=3, length=6, items_per_subject=3))
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(items, again, strict=True))
    other = SimulatedSliceDataset(config, seed=4, length=3, items_per_subject=3)
    assert not np.array_equal(next(iter(other))["image"], item["image"])
    for it in items:
        if it["view"] == "sax" and it["landmark_valid"][0]:
            assert Label.RV in np.unique(it["mask"])
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert batch["image"].shape == (3, 48, 48)
    assert data.subject_seed(0, 0) != data.subject_seed(1, 0)  # ranks/workers draw different subjects


def test_dataset_kspace_items():
    from cmrfm.simulate.dataset import SimulatedSliceDataset

    config = make_config([*TINY, "sequences=[cine]", "views=[sax]", "imaging.n_coils=4"])
    item = next(iter(SimulatedSliceDataset(config, seed=0, length=1, with_kspace=True, accelerations=(4,))))
    assert item["kspace"].shape == (4, 48, 48) and item["sampling_mask"].shape == (48,)
    assert item["acceleration"] == 4 and item["sampling_mask"].sum() == 24

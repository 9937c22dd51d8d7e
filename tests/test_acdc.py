"""ACDC adapter: synthetic patient folders (every branch) and the real training set when present."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrfm.constants import ML_PER_MM3, Group, Label, Sequence, View
from cmrfm.data.adapters import ADAPTERS
from cmrfm.data.adapters.acdc import ACDC_TO_INTERNAL, AcdcAdapter
from cmrfm.errors import InputError
from cmrfm.io.loader import detect_adapter, load_studies

INTERNAL_TO_ACDC = {int(v): k for k, v in ACDC_TO_INTERNAL.items()}
SPACING = (1.25, 1.25, 8.0)


def phantom(shape=(40, 48, 3), lv_radius=7.0, centre=(20.0, 22.0)) -> tuple[np.ndarray, np.ndarray]:
    """(image, internal labels) of a tiny heart: LV disk, MYO ring, RV blob beside it."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - centre[0], y - centre[1])
    rv = np.hypot(x - centre[0] - lv_radius - 6, y - centre[1]) < lv_radius
    plane = np.zeros(shape[:2], np.uint8)
    plane[rv] = Label.RV
    plane[r < lv_radius + 3] = Label.MYO
    plane[r < lv_radius] = Label.LV
    labels = np.repeat(plane[:, :, None], shape[2], axis=2)
    intensity = {Label.BACKGROUND: 40, Label.LV: 220, Label.MYO: 70, Label.RV: 200}
    image = np.zeros(shape, np.int16)
    for label, value in intensity.items():
        image[labels == label] = value
    return image, labels


def _save(array: np.ndarray, path: Path, unit_sform: bool = True) -> None:
    """Writes NIfTI like ACDC does: pixdim holds the spacing, the sform has unit columns."""
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    img = nib.Nifti1Image(array, affine)
    img.header.set_zooms(SPACING + ((1.0,) if array.ndim == 4 else ()))
    if unit_sform:
        img.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
        img.set_qform(None, code=0)
    nib.save(img, str(path))


def write_patient(
    folder: Path, ed: int = 1, es: int = 5, n_frames: int = 8, group: str = "DCM", with_4d: bool = False
) -> Path:
    """A synthetic ACDC patient folder; returns it."""
    folder.mkdir(parents=True)
    name = folder.name
    (folder / "Info.cfg").write_text(
        f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 170.0\nNbFrame: {n_frames}\nWeight: 70.5\n"
    )
    lut = np.zeros(4, np.uint8)
    for internal, acdc in INTERNAL_TO_ACDC.items():
        lut[internal] = acdc
    frames = {}
    for number, radius in ((ed, 8.0), (es, 5.0)):
        image, labels = phantom(lv_radius=radius)
        frames[number] = image
        _save(image, folder / f"{name}_frame{number:02d}.nii.gz")
        _save(lut[labels], folder / f"{name}_frame{number:02d}_gt.nii.gz")
    if with_4d:
        cine = np.stack([phantom(lv_radius=6.0)[0]] * n_frames, axis=-1)
        for number, image in frames.items():
            cine[..., number - 1] = image
        _save(cine, folder / f"{name}_4d.nii.gz")
    return folder


def test_registered_and_detected(tmp_path):
    assert ADAPTERS.get("acdc") is AcdcAdapter
    patient = write_patient(tmp_path / "root" / "patient001")
    write_patient(tmp_path / "root" / "patient002")
    assert detect_adapter(patient) == (AcdcAdapter, True)
    assert detect_adapter(tmp_path / "root") == (AcdcAdapter, False)
    assert AcdcAdapter.list_studies(tmp_path / "root") == [patient, tmp_path / "root" / "patient002"]
    assert AcdcAdapter.list_studies(tmp_path) == AcdcAdapter.list_studies(tmp_path / "root")


def test_ed_es_pair_without_4d(tmp_path):
    study = AcdcAdapter.load_study(write_patient(tmp_path / "patient007", ed=1, es=5, group="RV"))
    (series,) = study.series
    assert series.shape == (40, 48, 3, 2)
    assert (series.sequence, series.view) == (Sequence.CINE, View.SAX)
    assert sorted(series.labels) == [0, 1]
    assert (study.clinical.ed_frame, study.clinical.es_frame) == (0, 1)
    assert series.metadata["source_frames"] == [1, 5]
    assert study.clinical.group is Group.ARV
    assert (study.clinical.height_cm, study.clinical.weight_kg) == (170.0, 70.5)
    # pixdim wins over ACDC's unit-column sform
    assert series.spacing == pytest.approx(SPACING)
    # labels mapped ACDC -> internal: the bright disk is LV, its LV shrinks from ED to ES
    ed, es = series.labels[0], series.labels[1]
    image = series.image[..., 0]
    assert image[ed == Label.LV].mean() > image[ed == Label.MYO].mean()
    assert np.count_nonzero(ed == Label.LV) > np.count_nonzero(es == Label.LV)
    assert set(np.unique(ed)) == {0, Label.LV, Label.MYO, Label.RV}


def test_full_cine_when_4d_present(tmp_path):
    study = AcdcAdapter.load_study(write_patient(tmp_path / "patient090", ed=2, es=6, with_4d=True))
    (series,) = study.series
    assert series.num_frames == 8
    assert sorted(series.labels) == [1, 5]
    assert (study.clinical.ed_frame, study.clinical.es_frame) == (1, 5)


def test_images_only(tmp_path):
    folder = write_patient(tmp_path / "patient003")
    for gt in folder.glob("*_gt.nii.gz"):
        gt.unlink()
    with pytest.raises(InputError, match="label file missing"):
        AcdcAdapter.load_study(folder)
    study = AcdcAdapter.load_study(folder, with_labels=False)
    assert study.series[0].labels == {}
    assert study.series[0].num_frames == 2


def test_4d_that_disagrees_with_frame_files(tmp_path):
    folder = write_patient(tmp_path / "patient004", ed=1, es=5, with_4d=True)
    path = folder / "patient004_4d.nii.gz"
    cine = np.asanyarray(nib.load(str(path)).dataobj).copy()
    cine[0, 0, 0, 0] += 1  # frame ED-1 no longer equals the ED frame file
    _save(cine, path)
    with pytest.raises(InputError, match="frame 1 of the 4D cine differs"):
        AcdcAdapter.load_study(folder)


def test_label_affine_mismatch(tmp_path):
    folder = write_patient(tmp_path / "patient005")
    gt = folder / "patient005_frame01_gt.nii.gz"
    img = nib.load(str(gt))
    moved = img.affine.copy()
    moved[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), moved), str(gt))
    with pytest.raises(InputError, match="affine differs") as err:
        AcdcAdapter.load_study(folder)
    assert err.value.path == str(gt)


def test_corrupt_and_inconsistent_files(tmp_path):
    folder = write_patient(tmp_path / "patient006")
    frame = folder / "patient006_frame05.nii.gz"
    frame.write_bytes(frame.read_bytes()[:200])
    with pytest.raises(InputError) as err:
        AcdcAdapter.load_study(folder)
    assert err.value.path == str(frame)

    other = write_patient(tmp_path / "patient008")
    (other / "Info.cfg").write_text("ED: 1\nES: 9\nGroup: DCM\nNbFrame: 10\n")
    with pytest.raises(InputError, match="no image file for the ES frame 09"):
        AcdcAdapter.load_study(other)
    (other / "Info.cfg").write_text("ED: 1\nES: 5\nGroup: XYZ\n")
    with pytest.raises(InputError, match="unknown Group"):
        AcdcAdapter.load_study(other)

    bad_labels = write_patient(tmp_path / "patient009")
    gt = bad_labels / "patient009_frame01_gt.nii.gz"
    _save(np.full((40, 48, 3), 7, np.uint8), gt)
    with pytest.raises(InputError, match="unexpected label values"):
        AcdcAdapter.load_study(bad_labels)


def test_bad_study_reported_not_raised(tmp_path):
    write_patient(tmp_path / "patient001")
    broken = write_patient(tmp_path / "patient002")
    (broken / "patient002_frame01.nii.gz").write_bytes(b"not nifti")
    results = load_studies(tmp_path, "acdc")
    assert [r.study is not None for r in results] == [True, False]
    assert "NIfTI" in results[1].error


# ------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def acdc_studies(acdc_root):
    results = load_studies(acdc_root, "acdc")
    assert [r.error for r in results if r.error] == []
    return [r.study for r in results]


@pytest.mark.realdata
def test_real_all_patients_load(acdc_studies):
    assert len(acdc_studies) == 100
    counts = {}
    for study in acdc_studies:
        (series,) = study.series
        assert study.clinical.group is not None
        counts[study.clinical.group] = counts.get(study.clinical.group, 0) + 1
        assert {study.clinical.ed_frame, study.clinical.es_frame} == set(series.labels)
        assert series.labels_present() == ["LV", "MYO", "RV"]
        assert 0.6 < series.spacing[0] < 2.0 and 5.0 <= series.spacing[2] <= 10.0
    assert counts == dict.fromkeys(Group, 20)


@pytest.mark.realdata
def test_real_label_mapping_is_anatomical(acdc_studies):
    for study in acdc_studies:
        (series,) = study.series
        ed, es = study.clinical.ed_frame, study.clinical.es_frame
        image = series.image[..., ed]
        lv, myo = series.labels[ed] == Label.LV, series.labels[ed] == Label.MYO
        assert image[lv].mean() > image[myo].mean(), study.study_id
        voxel_ml = float(np.prod(series.spacing)) * ML_PER_MM3
        lv_ed = np.count_nonzero(series.labels[ed] == Label.LV) * voxel_ml
        lv_es = np.count_nonzero(series.labels[es] == Label.LV) * voxel_ml
        assert lv_ed > lv_es, study.study_id
        assert 20 < lv_ed < 600, (study.study_id, lv_ed)


@pytest.mark.realdata
def test_real_patient090_4d_matches_frames(acdc_root):
    folder = acdc_root / "patient090"
    study = AcdcAdapter.load_study(folder)
    (series,) = study.series
    assert series.num_frames == 12
    assert (study.clinical.ed_frame, study.clinical.es_frame) == (3, 10)
    for frame, t in ((4, 3), (11, 10)):
        data = np.asanyarray(nib.load(str(folder / f"patient090_frame{frame:02d}.nii.gz")).dataobj)
        np.testing.assert_array_equal(series.image[..., t], data)
    assert series.source_paths[0].endswith("patient090_4d.nii.gz")

import json

import nibabel as nib
import numpy as np
import pytest

from cmrfm.constants import Label, Sequence, View
from cmrfm.data.adapters.nifti import NiftiAdapter
from cmrfm.data.study import Series
from cmrfm.errors import InputError
from cmrfm.io.loader import detect_adapter, load_studies, load_study
from cmrfm.io.nifti import find_label_file, is_label_file, read_nifti
from cmrfm.io.writers import save_mask, save_series


def _oblique_affine():
    angle = 0.4
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]]
    ) @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.4, 1.6, 8.0])
    affine[:3, 3] = [-30.0, 12.5, 80.0]
    return affine


def _cine(frames=5, labelled=None):
    rng = np.random.default_rng(0)
    image = rng.random((12, 10, 4, frames)).astype(np.float32) * 500
    labels = {}
    for t in labelled if labelled is not None else range(frames):
        mask = np.zeros((12, 10, 4), np.uint8)
        mask[3:7, 2:6, 1:3] = Label.LV
        mask[2, 2:6, 1:3] = Label.MYO
        mask[8:10, 2:6, 1 + t % 2] = Label.RV
        labels[t] = mask
    return Series(
        "sax_cine",
        image,
        _oblique_affine(),
        sequence=Sequence.CINE,
        view=View.SAX,
        frame_times_ms=np.arange(frames) * 42.5,
        labels=labels,
        metadata={"vendor": "GE", "field_strength_t": np.float64(1.5), "not_json": object()},
    )


def test_save_series_round_trip_keeps_geometry_sidecar_and_labels(tmp_path):
    series = _cine()
    path = save_series(series, tmp_path / "subj" / "sax_cine.nii.gz")
    assert (tmp_path / "subj" / "sax_cine.json").is_file()
    assert (tmp_path / "subj" / "sax_cine_seg.nii.gz").is_file()
    back = read_nifti(path, with_labels=True)
    assert back.name == "sax_cine" and back.shape == series.shape
    np.testing.assert_allclose(back.image, series.image, rtol=1e-6)
    np.testing.assert_allclose(back.affine, series.affine, atol=1e-5)
    assert back.sequence == Sequence.CINE and back.view == View.SAX
    np.testing.assert_allclose(back.frame_times_ms, series.frame_times_ms)
    assert sorted(back.labels) == list(range(5))
    for t in range(5):
        np.testing.assert_array_equal(back.labels[t], series.labels[t])
    assert back.metadata["vendor"] == "GE" and back.metadata["field_strength_t"] == 1.5
    assert "not_json" not in json.loads((tmp_path / "subj" / "sax_cine.json").read_text())["metadata"]
    # the header carries mm/ms units and the frame interval
    header = nib.load(str(path)).header
    assert header.get_xyzt_units() == ("mm", "msec")
    assert header.get_zooms()[3] == pytest.approx(42.5)


def test_partially_labelled_cine_round_trip(tmp_path):
    series = _cine(frames=6, labelled=[1, 4])
    back = read_nifti(save_series(series, tmp_path / "c.nii.gz"), with_labels=True)
    assert sorted(back.labels) == [1, 4]
    np.testing.assert_array_equal(back.labels[4], series.labels[4])


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((9, 7), (9, 7, 1, 1)),
        ((9, 7, 3), (9, 7, 3, 1)),
        ((9, 7, 3, 5), (9, 7, 3, 5)),
        ((9, 7, 3, 1, 1), (9, 7, 3, 1)),
    ],
)
def test_reads_2d_3d_4d_in_stored_voxel_order(tmp_path, shape, expected):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = tmp_path / "x.nii.gz"
    nib.Nifti1Image(data, np.diag([1.2, 1.3, 6.0, 1.0])).to_filename(str(path))
    series = read_nifti(path)
    assert series.shape == expected
    np.testing.assert_array_equal(series.image.reshape(-1), data.reshape(-1))  # X, Y, Z, T order kept
    assert series.spacing == pytest.approx((1.2, 1.3, 6.0))
    assert series.sequence is None and series.view is None


def test_expect_ndim_refuses_a_cine_where_a_volume_is_expected(tmp_path):
    path = tmp_path / "cine.nii.gz"
    nib.Nifti1Image(np.zeros((8, 8, 3, 4), np.float32), np.eye(4)).to_filename(str(path))
    with pytest.raises(InputError, match=r"expected a 3D image, got 4D") as err:
        read_nifti(path, expect_ndim=3)
    assert err.value.path == str(path)
    assert read_nifti(path, expect_ndim=(3, 4)).num_frames == 4


def test_unit_sform_is_rescaled_to_pixdim_and_mask_keeps_the_header(tmp_path):
    # ACDC style: sform columns are unit vectors, the voxel size is in pixdim only.
    img = nib.Nifti1Image(np.ones((10, 8, 3), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms((1.5625, 1.5625, 10.0))
    img.header.set_qform(None, code=0)
    img.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    path = tmp_path / "img.nii.gz"
    img.to_filename(str(path))
    series = read_nifti(path)
    assert series.spacing == pytest.approx((1.5625, 1.5625, 10.0))
    assert series.metadata["affine_rescaled_to_pixdim"]
    mask = np.zeros((10, 8, 3), np.uint8)
    mask[2:5, 3:6, 1] = Label.LV
    out = save_mask(mask, series, tmp_path / "pred.nii.gz", label_names={0: "background", 1: "LV"})
    written, original = nib.load(str(out)), nib.load(str(path))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.get_sform(), original.get_sform())
    assert int(written.header["sform_code"]) == 2 and int(written.header["qform_code"]) == 0
    assert written.header.get_zooms() == pytest.approx(original.header.get_zooms())
    np.testing.assert_array_equal(np.asarray(written.dataobj), mask)
    assert json.loads((tmp_path / "pred.json").read_text())["label_names"] == {"0": "background", "1": "LV"}


def test_save_mask_on_a_dicom_like_series_uses_its_affine(tmp_path):
    series = _cine(frames=3)
    out = save_mask(series.labels[0], series, tmp_path / "m")  # suffix added
    assert out.name == "m.nii.gz"
    np.testing.assert_allclose(nib.load(str(out)).affine, series.affine, atol=1e-5)
    with pytest.raises(InputError, match="does not match"):
        save_mask(np.zeros((12, 10, 5), np.uint8), series, tmp_path / "bad.nii.gz")


def test_label_file_pairing_convention_and_3d_label_is_frame_zero(tmp_path):
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    nib.Nifti1Image(np.ones((8, 8, 2), np.float32), affine).to_filename(str(tmp_path / "p_frame01.nii.gz"))
    acdc = np.zeros((8, 8, 2), np.uint8)
    acdc[1:3, 1:3, 0], acdc[4:6, 4:6, 1], acdc[6, 6, 1] = 1, 3, 2  # ACDC: 1 RV, 2 MYO, 3 LV
    nib.Nifti1Image(acdc, affine).to_filename(str(tmp_path / "p_frame01_gt.nii.gz"))
    (tmp_path / "p_frame01.json").write_text(json.dumps({"label_convention": "acdc", "sequence": "cine"}))
    image_path = tmp_path / "p_frame01.nii.gz"
    assert find_label_file(image_path) == tmp_path / "p_frame01_gt.nii.gz"
    assert is_label_file(tmp_path / "p_frame01_gt.nii.gz") and not is_label_file(image_path)
    assert read_nifti(image_path).labels == {}  # labels only when asked
    series = read_nifti(image_path, with_labels=True)
    assert list(series.labels) == [0]
    assert series.labels[0][1, 1, 0] == Label.RV and series.labels[0][4, 4, 1] == Label.LV
    assert series.labels[0][6, 6, 1] == Label.MYO


def test_dcm2niix_sidecar_is_understood_without_identifiers(tmp_path):
    path = tmp_path / "lge.nii.gz"
    nib.Nifti1Image(np.ones((8, 8, 2), np.float32), np.eye(4)).to_filename(str(path))
    side = {
        "Manufacturer": "Siemens",
        "ManufacturersModelName": "Prisma",
        "MagneticFieldStrength": 3,
        "SeriesDescription": "PSIR_SAX",
        "RepetitionTime": 0.0045,
        "PatientName": "Doe^Janet",
        "metadata": {"PatientID": "PID1", "site": "A"},
    }
    (tmp_path / "lge.json").write_text(json.dumps(side))
    series = read_nifti(path)
    assert series.sequence == Sequence.LGE and series.view == View.SAX
    assert series.metadata["vendor"] == "Siemens" and series.metadata["field_strength_t"] == 3.0
    assert series.metadata["repetition_time_ms"] == pytest.approx(4.5)
    assert series.metadata["site"] == "A"
    dumped = json.dumps(series.metadata)
    assert "Janet" not in dumped and "PID1" not in dumped


def test_bad_sidecar_values_are_input_errors(tmp_path):
    path = tmp_path / "x.nii.gz"
    nib.Nifti1Image(np.ones((8, 8, 2, 3), np.float32), np.eye(4)).to_filename(str(path))
    (tmp_path / "x.json").write_text(json.dumps({"sequence": "spinning"}))
    with pytest.raises(InputError, match="unknown sequence"):
        read_nifti(path)
    (tmp_path / "x.json").write_text(json.dumps({"frame_times_ms": [0, 1]}))
    with pytest.raises(InputError, match="frame_times_ms has 2 values"):
        read_nifti(path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_nifti(path)


def test_nifti_folder_is_one_study_and_labels_are_not_series(tmp_path):
    subject = tmp_path / "cohort" / "sub01"
    save_series(_cine(frames=3), subject / "sax_cine.nii.gz")
    lax = _cine(frames=3, labelled=[])
    lax.name, lax.view = "lax_4ch", View.FOUR_CH
    save_series(lax, subject / "lax_4ch.nii.gz")
    (subject / "study.json").write_text(
        json.dumps({"clinical": {"group": "DCM", "ed_frame": 0, "es_frame": 2}})
    )
    adapter, single = detect_adapter(subject)
    assert adapter is NiftiAdapter and single
    study = load_study(subject)
    assert study.study_id == "sub01" and [s.name for s in study.series] == ["lax_4ch", "sax_cine"]
    assert study.find(view=View.FOUR_CH)[0].labels == {}
    assert sorted(study.find(view=View.SAX)[0].labels) == [0, 1, 2]
    assert str(study.clinical.group) == "DCM" and study.clinical.es_frame == 2
    # the cohort folder is a root of such studies
    save_series(_cine(frames=2), tmp_path / "cohort" / "sub02" / "sax_cine.nii.gz")
    adapter, single = detect_adapter(tmp_path / "cohort")
    assert adapter is NiftiAdapter and not single
    results = load_studies(tmp_path / "cohort")
    assert [r.study.study_id for r in results] == ["sub01", "sub02"]


def test_real_acdc_frame_reads_with_pixdim_spacing(acdc_root):
    series = read_nifti(
        acdc_root / "patient001" / "patient001_frame01.nii.gz", with_labels=True, expect_ndim=3
    )
    assert series.shape[:3] == (216, 256, 10) and series.num_frames == 1
    assert series.spacing == pytest.approx((1.5625, 1.5625, 10.0))
    assert set(np.unique(series.labels[0])) == {0, 1, 2, 3}


def test_save_study_round_trip_through_the_nifti_adapter(tmp_path):
    from cmrfm.constants import Group
    from cmrfm.data.study import ClinicalInfo, Study
    from cmrfm.io.writers import save_study

    study = Study(
        "sim0007",
        [_cine(frames=3)],
        clinical=ClinicalInfo(
            group=Group.HCM, ed_frame=0, es_frame=2, extra={"lv_ef": 0.61, "bad": object()}
        ),
    )
    folder = save_study(study, tmp_path / "cohort" / "sim0007")
    back = load_study(folder)
    assert back.study_id == "sim0007" and back.dataset == "nifti"
    assert back.clinical.group == Group.HCM and back.clinical.es_frame == 2
    assert back.clinical.extra == {"lv_ef": 0.61}
    np.testing.assert_allclose(back.series[0].image, study.series[0].image, rtol=1e-6)
    assert sorted(back.series[0].labels) == [0, 1, 2]


@pytest.mark.parametrize(
    "side",
    [
        {"metadata": ["a"]},
        {"labelled_frames": "0,1"},
        {"frame_times_ms": ["x", 1, 2]},
        {"slice_positions": [[0, 0]]},
        {"spacing_known": "yes"},
        {"name": ""},
    ],
)
def test_sidecar_keys_of_the_wrong_type(tmp_path, side):
    path = tmp_path / "x.nii.gz"
    nib.Nifti1Image(np.ones((8, 8, 2, 3), np.float32), np.eye(4)).to_filename(str(path))
    (tmp_path / "x.json").write_text(json.dumps(side))
    with pytest.raises(InputError, match=f"sidecar key '{next(iter(side))}' has an invalid value"):
        read_nifti(path)


def test_lone_acdc_frame_uses_acdc_label_ids(acdc_root):
    """A single ACDC frame file (no sidecar) must map ACDC's 1 RV / 3 LV, not read them as internal ids."""
    from cmrfm.constants import Label
    from cmrfm.io.loader import load_study

    series = load_study(acdc_root / "patient001" / "patient001_frame01.nii.gz").series[0]
    mask, image = series.labels[0], series.image[..., 0]
    assert image[mask == Label.LV].mean() > image[mask == Label.MYO].mean()
    assert (mask == Label.LV).sum() > (mask == Label.RV).sum()  # patient001 (DCM): large LV

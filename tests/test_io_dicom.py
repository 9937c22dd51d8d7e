import json

import numpy as np
import pytest
from dicom_factory import (
    FAKE_BIRTH_DATE,
    FAKE_PATIENT_ID,
    VENDOR_STYLES,
    write_cine,
    write_enhanced,
    write_localiser,
)
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from cmrfm.constants import Sequence, View
from cmrfm.data.adapters.dicom_folder import DicomFolderAdapter
from cmrfm.data.study import RAS_LPS, Series
from cmrfm.io.describe import guess_sequence, guess_view, sanitise_text, vendor_name
from cmrfm.io.dicom import read_dicom_series, read_dicom_study, scan_dicom_folder
from cmrfm.io.loader import detect_adapter, load_studies
from cmrfm.io.writers import save_series_dicom

EXPECTED_VENDOR = {"siemens": "Siemens", "ge": "GE", "philips": "Philips", "canon": "Canon"}


def _lps_to_ras(point):
    return RAS_LPS[:3, :3] @ point


def _check_geometry(series, written):
    """The affine maps voxels to the IPP-derived positions, slices ascend along the normal."""
    X, Y, Z, _ = series.shape
    for i, j, k in [(0, 0, 0), (X - 1, 0, 0), (0, Y - 1, 1), (3, 5, Z - 1), (X - 1, Y - 1, Z - 1)]:
        world = series.affine @ np.array([i, j, k, 1.0])
        np.testing.assert_allclose(world[:3], _lps_to_ras(written.world_lps(i, j, k)), atol=1e-4)
    along = series.positions() @ series.slice_normal
    assert np.all(np.diff(along) > 0)


@pytest.mark.parametrize("vendor", sorted(VENDOR_STYLES))
def test_vendor_cine_shuffled_oblique(tmp_path, vendor):
    written = write_cine(tmp_path / vendor, vendor=vendor, n_slices=3, n_frames=4, seed=11)
    [series] = read_dicom_series(tmp_path / vendor)
    assert series.shape == (12, 16, 3, 4)  # (X = columns, Y = rows, Z, T)
    np.testing.assert_allclose(series.image, written.values)  # slices and frames sorted, rescale applied
    _check_geometry(series, written)
    assert series.spacing == pytest.approx((1.5, 1.25, 8.0), abs=1e-4)
    if written.trigger_ms is None:  # Canon: no TriggerTime, frames ordered by InstanceNumber
        assert series.frame_times_ms is None
    else:
        assert np.all(np.diff(series.frame_times_ms) > 0)
        np.testing.assert_allclose(series.frame_times_ms, written.trigger_ms + 0.5, atol=1e-6)
    assert series.sequence == Sequence.CINE and series.view == View.SAX
    meta = series.metadata
    assert meta["vendor"] == EXPECTED_VENDOR[vendor]
    assert meta["field_strength_t"] == VENDOR_STYLES[vendor]["field"]
    assert meta["repetition_time_ms"] == pytest.approx(3.1) and meta["flip_angle_deg"] == 50
    assert meta["pixel_bandwidth_hz"] == 930 and meta["num_files"] == 12
    dumped = json.dumps(meta) + json.dumps(series.summary()) + series.name
    for secret in ("Janet", "Doe", FAKE_PATIENT_ID, FAKE_BIRTH_DATE):
        assert secret not in dumped
    if vendor == "philips":
        assert meta["philips_scale_slope"] == pytest.approx(0.37)
    if vendor == "siemens":
        assert meta["series_description"] == "cine_trufi_sax [redacted]"


def test_enhanced_multiframe(tmp_path):
    written = write_enhanced(tmp_path / "enh" / "cine.dcm")
    [series] = read_dicom_series(tmp_path / "enh")
    assert series.shape == (12, 16, 3, 4)
    np.testing.assert_allclose(series.image, written.values)
    _check_geometry(series, written)
    np.testing.assert_allclose(series.frame_times_ms, written.trigger_ms)
    assert series.metadata["enhanced_multiframe"] and series.metadata["num_files"] == 1
    assert series.sequence == Sequence.CINE and series.view == View.FOUR_CH
    assert series.spacing == pytest.approx((1.3, 1.1, 7.0), abs=1e-4)


@pytest.mark.parametrize(("syntax", "rows", "cols"), [(RLELossless, 16, 12), (JPEG2000Lossless, 64, 48)])
def test_compressed_transfer_syntaxes(tmp_path, syntax, rows, cols):
    written = write_cine(
        tmp_path / "c", vendor="ge", n_slices=2, n_frames=2, rows=rows, cols=cols, compress=syntax
    )
    [series] = read_dicom_series(tmp_path / "c")
    np.testing.assert_array_equal(series.image, written.values)
    assert series.metadata["transfer_syntax"] == str(syntax)


def test_folder_with_cine_localiser_and_readme(tmp_path):
    study_dir = tmp_path / "exam"
    uid = generate_uid()
    written = write_cine(study_dir / "series_cine", vendor="siemens", study_uid=uid, series_number=9)
    write_localiser(study_dir / "loc", study_uid=uid)
    (study_dir / "README.txt").write_text("exported by a PACS\n")
    (study_dir / "loc" / "notes").write_bytes(b"\x00\x01 not dicom")
    study = read_dicom_study(study_dir)
    assert study.study_id == "exam"
    names = [s.name for s in study.series]
    assert len(study.series) == 4, names  # the 3-plane localiser splits by orientation
    localisers, cine = study.series[:3], study.series[3]
    assert all(s.shape == (24, 24, 1, 1) for s in localisers)
    assert all(s.sequence == Sequence.OTHER and s.view == View.OTHER for s in localisers)
    normals = {tuple(np.round(s.slice_normal, 3)) for s in localisers}
    assert len(normals) == 3
    np.testing.assert_allclose(cine.image, written.values)
    assert study.find(sequence=Sequence.CINE, view=View.SAX) == [cine]
    adapter, single = detect_adapter(study_dir)
    assert adapter is DicomFolderAdapter and single


def test_uneven_gaps_and_spacing_mismatch(tmp_path):
    written = write_cine(
        tmp_path / "u", n_slices=4, n_frames=2, gaps_mm=[8.0, 10.0, 8.0], spacing_between_slices=5.0
    )
    [series] = read_dicom_series(tmp_path / "u")
    np.testing.assert_allclose(series.image, written.values)
    assert series.metadata["uneven_slice_spacing"] and series.metadata["slice_gaps_mm"] == [8.0, 10.0, 8.0]
    assert series.metadata["slice_spacing_mismatch"]
    expected = np.stack([_lps_to_ras(p) for p in written.positions_lps])
    np.testing.assert_allclose(series.positions(), expected, atol=1e-4)


def test_even_stack_keeps_affine_positions(tmp_path):
    write_cine(tmp_path / "e", n_slices=3, n_frames=2)
    [series] = read_dicom_series(tmp_path / "e")
    assert series.slice_positions is None and "slice_spacing_mismatch" not in series.metadata


def test_dicom_root_of_studies(tmp_path):
    write_cine(tmp_path / "root" / "a", vendor="ge", n_frames=2)
    write_cine(tmp_path / "root" / "b", vendor="canon", n_frames=2)
    adapter, single = detect_adapter(tmp_path / "root")
    assert adapter is DicomFolderAdapter and not single
    results = load_studies(tmp_path / "root")
    assert [r.study.study_id for r in results] == ["a", "b"]
    assert [r.study.series[0].metadata["vendor"] for r in results] == ["GE", "Canon"]


def test_single_file_study_key_is_opaque(tmp_path):
    written = write_cine(tmp_path / "f", n_slices=1, n_frames=1)
    study = read_dicom_study(written.files[0])
    assert study.study_id.startswith("dcm-") and len(study.study_id) == 14
    assert study.series[0].shape == (12, 16, 1, 1)


def test_layout_exposes_slice_frame_grid(tmp_path):
    write_cine(tmp_path / "g", vendor="siemens", n_slices=3, n_frames=4, names="instance")
    [layout] = scan_dicom_folder(tmp_path / "g")
    # siemens style: InstanceNumber = slice * frames + frame + 1, slices written ascending
    for k, group in enumerate(layout.grid):
        assert [ref.instance for ref in group] == [k * 4 + t + 1 for t in range(4)]
        assert all(ref.path.name == f"{ref.instance}.dcm" for ref in group)


@pytest.mark.parametrize(
    ("texts", "sequence", "view"),
    [
        (["cine_trufi_sax"], Sequence.CINE, View.SAX),
        (["FIESTA CINE 4CH"], Sequence.CINE, View.FOUR_CH),
        (["sBTFE_CINE 2ch"], Sequence.CINE, View.TWO_CH),
        (["cine LVOT"], Sequence.CINE, View.THREE_CH),
        (["PSIR short axis"], Sequence.LGE, View.SAX),
        (["DE_SA_single"], Sequence.LGE, View.SAX),
        (["MOLLI 5(3)3 SAX"], Sequence.T1_MAP, View.SAX),
        (["T1 MAP post"], Sequence.T1_MAP, None),
        (["T2 map mid"], Sequence.T2_MAP, None),
        (["T2* 3 echoes"], Sequence.OTHER, None),
        (["localizer"], Sequence.OTHER, View.OTHER),
        (["", None], None, None),
    ],
)
def test_guess_sequence_and_view(texts, sequence, view):
    assert guess_sequence(texts) == sequence
    assert guess_view(texts) == view


def test_text_helpers():
    assert vendor_name("SIEMENS") == "Siemens" and vendor_name("GE MEDICAL SYSTEMS") == "GE"
    assert vendor_name("Philips Healthcare") == "Philips" and vendor_name("TOSHIBA_MEC") == "Canon"
    assert sanitise_text("cine\x00 SAX  Smith", forbidden={"smith"}) == "cine SAX [redacted]"
    assert sanitise_text("   ") is None


@pytest.mark.parametrize(
    ("sequence", "view", "slices"),
    [(Sequence.CINE, View.SAX, 3), (Sequence.CINE, View.FOUR_CH, 1), (Sequence.T1_MAP, View.SAX, 2)],
)
def test_save_series_dicom_round_trip(tmp_path, sequence, view, slices):
    rotation, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    if np.linalg.det(rotation) < 0:
        rotation[:, 2] *= -1
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.3, 1.7, 9.0])
    affine[:3, 3] = [12.0, -40.0, 33.0]
    image = np.random.default_rng(1).random((14, 10, slices, 3)).astype(np.float32) * 800 - 100
    series = Series(
        "study_" + str(view),
        image,
        affine,
        sequence=sequence,
        view=view,
        frame_times_ms=np.array([0.0, 40, 80]),
    )
    files = save_series_dicom(series, tmp_path / "out")
    assert len(files) == slices * 3
    [back] = read_dicom_series(tmp_path / "out")
    assert back.shape == series.shape
    np.testing.assert_allclose(back.image, image, atol=900 / 65535)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    np.testing.assert_allclose(back.frame_times_ms, [0, 40, 80])
    assert back.sequence == sequence and back.view == view


def test_magnitude_and_phase_in_one_series_are_split(tmp_path):
    uid = generate_uid()
    magnitude = write_cine(tmp_path / "psir", n_slices=2, n_frames=1, series_uid=uid, description="PSIR SAX")
    phase = write_cine(
        tmp_path / "psir" / "p",
        n_slices=2,
        n_frames=1,
        series_uid=uid,
        description="PSIR SAX",
        image_type=("ORIGINAL", "PRIMARY", "P"),
        seed=0,
    )
    series = read_dicom_series(tmp_path / "psir")
    assert len(series) == 2 and all(s.shape == (12, 16, 2, 1) for s in series)
    assert all(s.sequence == Sequence.LGE and s.view == View.SAX for s in series)
    np.testing.assert_allclose(series[0].image, magnitude.values)
    np.testing.assert_allclose(series[1].image, phase.values)


def test_one_series_per_slice_is_joined_into_a_stack(tmp_path):
    uid = generate_uid()
    offsets = [16.0, 0.0, 24.0, 8.0]  # series numbers do not follow the anatomy
    parts = [
        write_cine(
            tmp_path / "exam" / f"s{n}",
            n_slices=1,
            n_frames=3,
            first_offset_mm=offset,
            series_number=10 + n,
            study_uid=uid,
            description=f"cine_sax_{n}",
        )
        for n, offset in enumerate(offsets)
    ]
    write_localiser(tmp_path / "exam" / "loc", study_uid=uid)
    study = read_dicom_study(tmp_path / "exam")
    stacks = [s for s in study.series if s.num_slices > 1]
    assert len(stacks) == 1 and len(study.series) == 4  # 3 localiser planes + the joined stack
    stack = stacks[0]
    assert stack.shape == (12, 16, 4, 3) and stack.view == View.SAX
    assert stack.metadata["merged_series"] == [10, 11, 12, 13]
    order = np.argsort(offsets)
    expected = np.concatenate([parts[n].values for n in order], axis=2)  # (X, Y, Z, T)
    np.testing.assert_allclose(stack.image, expected)
    assert stack.spacing[2] == pytest.approx(8.0, abs=1e-4)
    apart = read_dicom_study(tmp_path / "exam", merge_slices=False)
    assert len(apart.series) == 7


def test_images_without_geometry_are_read_in_instance_order(tmp_path):
    import pydicom

    written = write_cine(tmp_path / "sc", n_slices=3, n_frames=1, names="instance")
    for path in written.files:
        ds = pydicom.dcmread(path)
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            delattr(ds, keyword)
        ds.save_as(path)
    [series] = read_dicom_series(tmp_path / "sc")
    assert not series.spacing_known and series.summary()["spacing_mm"] is None
    np.testing.assert_allclose(series.image, written.values)  # siemens style: instance order = slice order

"""DICOM input to ``cmrfm analyze``: a DICOM SEG highdicom reads back, and no identifier leaks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from dicom_factory import FAKE_BIRTH_DATE, FAKE_PATIENT_ID, write_cine, write_localiser
from pydicom.uid import generate_uid

from cmrfm.cli import main

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
#: Identifier fragments planted by the DICOM factory (name, free-text description, ID, birth date).
IDENTIFIERS = ("Doe", "Janet", FAKE_PATIENT_ID, FAKE_BIRTH_DATE)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seg_weights(tmp_path_factory) -> Path:
    from cmrfm.clinical.bundle import write_random_weights

    folder = tmp_path_factory.mktemp("weights")
    write_random_weights(folder, tasks=["sax-seg"], image_size=32, backbone=TINY)
    return folder


@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom") / "study"
    written = write_cine(folder, vendor="siemens", n_slices=4, n_frames=3, rows=40, cols=36)
    frame_of_reference = generate_uid()
    for path in written.files:  # real MR images always carry one (type 1); the SEG needs it
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = frame_of_reference
        ds.save_as(path)
    return folder, written


def _all_output_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    out = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            out.append((path, data))
    return out


def test_dicom_input_gives_a_readable_seg_without_identifiers(tmp_path, seg_weights, dicom_study):
    import highdicom as hd

    folder, written = dicom_study
    out = tmp_path / "out"
    assert main(["analyze", str(folder), "--out", str(out), "--weights", str(seg_weights)]) == 0
    (study_dir,) = [p for p in out.iterdir() if p.is_dir()]
    segs = list((study_dir / "seg").glob("*.dcm"))
    assert len(segs) == 1, json.loads((study_dir / "measurements.json").read_text())["warnings"]
    seg = hd.seg.segread(segs[0])
    assert seg.Modality == "SEG" and seg.number_of_segments >= 1
    referenced = {
        ref.ReferencedSOPInstanceUID
        for item in seg.ReferencedSeriesSequence
        for ref in item.ReferencedInstanceSequence
    }
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in written.files}
    m = json.loads((study_dir / "measurements.json").read_text())
    frames = {m["ed_frame"], m["es_frame"]}
    assert referenced <= sources and len(referenced) == 4 * len(frames)
    assert str(seg.PatientName) == "ANONYMOUS" and seg.PatientID == study_dir.name
    for path, data in _all_output_bytes(out):
        for word in IDENTIFIERS:
            assert word.encode() not in data, f"{word} leaked into {path.name}"


def test_keep_identifiers_keeps_the_patient_module(tmp_path, seg_weights, dicom_study):
    folder, _ = dicom_study
    out = tmp_path / "out"
    args = ["analyze", str(folder), "--out", str(out), "--weights", str(seg_weights)]
    assert main([*args, "--keep-identifiers", "--no-report"]) == 0
    (seg_path,) = list(out.rglob("*_seg.dcm"))
    assert "Doe" in str(pydicom.dcmread(seg_path).PatientName)


def test_write_dicom_seg_places_labels_on_their_source_images(tmp_path, dicom_study):
    import highdicom as hd

    from cmrfm.clinical.dicom_seg import write_dicom_seg
    from cmrfm.io.dicom import read_dicom_study

    folder, written = dicom_study
    study = read_dicom_study(folder)
    series = study.series[0]
    labels = np.zeros(series.shape, np.uint8)  # (X, Y, Z, T)
    labels[5:15, 8:20, 1, 2] = 1  # LV on slice 1, frame 2 only
    labels[20:30, 8:20, 1, 2] = 3
    path = write_dicom_seg(series, labels, [2], folder, tmp_path / "x.dcm", "key")
    seg = hd.seg.segread(path)
    assert seg.number_of_segments == 2
    lv = seg.get_segment_description(1)
    assert lv.SegmentLabel == "LV blood pool"
    # The frame of the LV segment references slice 1 / frame 2's source image, rows×cols transposed.
    source = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in written.files}
    checked = 0
    for frame_item, pixels in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array, strict=True):
        uid = frame_item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = frame_item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        expected = (labels[:, :, 1, 2] == (1 if number == 1 else 3)).T
        if pixels.any():
            np.testing.assert_array_equal(pixels.astype(bool), expected)
            assert uid in source
            checked += 1
    assert checked == 2


def test_mixed_series_folder_segments_only_the_cine(tmp_path, seg_weights):
    study_uid = generate_uid()
    folder = tmp_path / "mixed"
    write_cine(folder / "cine", n_slices=3, n_frames=2, rows=32, cols=32, study_uid=study_uid)
    write_localiser(folder / "loc", study_uid=study_uid)
    out = tmp_path / "out"
    args = ["analyze", str(folder), "--out", str(out), "--weights", str(seg_weights), "--no-report"]
    assert main(args) == 0
    (study_dir,) = [p for p in out.iterdir() if p.is_dir()]
    m = json.loads((study_dir / "measurements.json").read_text())
    assert len(m["series"]) >= 2
    assert m["cine_series"] in [s["name"] for s in m["series"] if s["view"] == "sax"]
    assert all(s["view"] != "sax" for s in m["series"] if s["name"] != m["cine_series"])

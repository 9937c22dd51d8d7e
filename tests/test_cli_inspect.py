import json

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import FAKE_PATIENT_ID, write_cine, write_localiser
from pydicom.uid import generate_uid

from cmrfm.cli import main
from cmrfm.constants import Label, Sequence, View
from cmrfm.data.study import Series
from cmrfm.io.loader import detect_adapter
from cmrfm.io.writers import save_series


def _inspect_json(capsys, path):
    code = main(["data", "inspect", "--json", str(path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _simulated_subject(folder, frames=4):
    image = np.random.default_rng(0).random((16, 14, 3, frames)).astype(np.float32)
    labels = {}
    for t in range(frames):
        mask = np.zeros((16, 14, 3), np.uint8)
        mask[5:9, 5:9, :] = Label.LV
        mask[4, 5:9, :] = Label.MYO
        labels[t] = mask
    series = Series(
        "sax_cine",
        image,
        np.diag([1.4, 1.4, 8.0, 1.0]),
        sequence=Sequence.CINE,
        view=View.SAX,
        frame_times_ms=np.arange(frames) * 40.0,
        labels=labels,
        metadata={"vendor": "simulator"},
    )
    save_series(series, folder / "sax_cine.nii.gz")
    lax = Series("lax_2ch", image[:, :, :1], np.eye(4), sequence=Sequence.CINE, view=View.TWO_CH)
    save_series(lax, folder / "lax_2ch.nii.gz")


def test_inspect_a_nifti_file(tmp_path, capsys):
    path = tmp_path / "scan.nii.gz"
    nib.Nifti1Image(np.ones((10, 12, 3), np.float32), np.diag([1.5, 1.5, 9.0, 1.0])).to_filename(str(path))
    report = _inspect_json(capsys, path)
    assert report["failures"] == []
    [study] = report["studies"]
    assert study["study"] == "scan" and study["dataset"] == "nifti"
    assert study["series"][0]["shape"] == [10, 12, 3, 1] and study["series"][0]["spacing_mm"] == [
        1.5,
        1.5,
        9.0,
    ]


def test_inspect_a_simulated_subject_reads_sidecars(tmp_path, capsys):
    _simulated_subject(tmp_path / "sim" / "subject001")
    report = _inspect_json(capsys, tmp_path / "sim" / "subject001")
    [study] = report["studies"]
    by_name = {s["name"]: s for s in study["series"]}
    assert set(by_name) == {"sax_cine", "lax_2ch"}  # the _seg file is not a series
    sax = by_name["sax_cine"]
    assert sax["sequence"] == "cine" and sax["view"] == "sax" and sax["vendor"] == "simulator"
    assert sax["labelled_frames"] == [0, 1, 2, 3] and sax["labels_present"] == ["LV", "MYO"]
    assert by_name["lax_2ch"]["view"] == "2ch" and by_name["lax_2ch"]["labelled_frames"] == []
    # and the cohort root lists each subject
    _simulated_subject(tmp_path / "sim" / "subject002")
    report = _inspect_json(capsys, tmp_path / "sim")
    assert [s["study"] for s in report["studies"]] == ["subject001", "subject002"]


def test_inspect_a_dicom_folder_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps tables to the terminal width
    uid = generate_uid()
    write_cine(tmp_path / "exam" / "cine", vendor="ge", n_slices=4, n_frames=3, study_uid=uid)
    write_localiser(tmp_path / "exam" / "loc", study_uid=uid)
    (tmp_path / "exam" / "README.txt").write_text("export\n")
    assert main(["data", "inspect", str(tmp_path / "exam")]) == 0
    table = capsys.readouterr().out
    assert "exam" in table and "s005_fiesta_cine_sax" in table and "GE" in table
    report = _inspect_json(capsys, tmp_path / "exam")
    [study] = report["studies"]
    assert study["dataset"] == "dicom_folder" and len(study["series"]) == 4
    cine = [s for s in study["series"] if s["sequence"] == "cine"]
    assert len(cine) == 1 and cine[0]["shape"] == [12, 16, 4, 3] and cine[0]["view"] == "sax"
    assert FAKE_PATIENT_ID not in json.dumps(report) and "Janet" not in json.dumps(report)


def test_acdc_folders_are_left_to_the_acdc_adapter(acdc_root):
    assert detect_adapter(acdc_root / "patient001")[0].name == "acdc"
    assert detect_adapter(acdc_root)[0].name == "acdc"
    assert detect_adapter(acdc_root / "patient001" / "patient001_frame01.nii.gz")[0].name in {"acdc", "nifti"}


@pytest.mark.parametrize("where", ["root", "study"])
def test_inspect_sunnybrook(sunnybrook_root, capsys, where):
    path = sunnybrook_root if where == "root" else sunnybrook_root / "dicoms" / "SCD0000101"
    report = _inspect_json(capsys, path)
    assert report["failures"] == []
    study = report["studies"][0]
    assert study["study"] == "SCD0000101" and study["dataset"] == "sunnybrook"
    [series] = study["series"]
    assert series["shape"] == [256, 256, 12, 20] and series["spacing_mm"][0] == pytest.approx(
        1.3672, abs=1e-3
    )
    assert series["sequence"] == "cine" and series["view"] == "sax" and series["vendor"] == "GE"
    assert series["labels_present"] == ["LV", "MYO"] and len(series["labelled_frames"]) == 2

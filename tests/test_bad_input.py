"""A corpus of broken inputs, generated at test time: each must give one clear InputError naming the file."""

import gzip
import re

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import write_cine

from cmrfm.cli import main
from cmrfm.errors import InputError
from cmrfm.io.dicom import read_dicom_series, read_dicom_study
from cmrfm.io.nifti import read_nifti
from cmrfm.io.writers import save_mask


def _nifti(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, np.diag([1.5, 1.5, 8.0, 1.0]) if affine is None else affine).to_filename(str(path))
    return path


def _image(shape=(24, 20, 4)):
    return np.random.default_rng(0).random(shape).astype(np.float32)


# Each builder returns (path given to the reader / CLI, file the error must name, reason pattern).
def truncated_gz(tmp):
    path = _nifti(tmp / "trunc.nii.gz", _image((64, 64, 8)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, path, "truncated or corrupt"


def truncated_nii(tmp):
    path = _nifti(tmp / "trunc.nii", _image())
    path.write_bytes(path.read_bytes()[:600])
    return path, path, "truncated or corrupt"


def garbage_nifti(tmp):
    path = tmp / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 3))
    return path, path, "not a readable NIfTI"


def random_bytes_nifti(tmp):
    path = tmp / "noise.nii"
    path.write_bytes(np.random.default_rng(1).bytes(400))
    return path, path, "not a readable NIfTI"


def nan_voxels(tmp):
    data = _image()
    data[0, 0, 0] = data[1, 2, 3] = np.nan
    data[5, 5, 1] = np.inf
    return _nifti(tmp / "nan.nii.gz", data), tmp / "nan.nii.gz", r"3 of 1920 voxels are NaN or infinite"


def zero_size(tmp):
    return (
        _nifti(tmp / "empty.nii.gz", np.zeros((0, 8, 4), np.float32)),
        tmp / "empty.nii.gz",
        "empty or too small",
    )


def one_pixel(tmp):
    return (
        _nifti(tmp / "dot.nii.gz", np.ones((1, 1, 1), np.float32)),
        tmp / "dot.nii.gz",
        "empty or too small",
    )


def label_shape_mismatch(tmp):
    image = _nifti(tmp / "s" / "img.nii.gz", _image())
    label = _nifti(tmp / "s" / "img_gt.nii.gz", np.zeros((24, 19, 4), np.uint8))
    return image, label, r"label shape \(24, 19, 4\) differs from image shape \(24, 20, 4\)"


def label_affine_mismatch(tmp):
    image = _nifti(tmp / "s" / "img.nii.gz", _image())
    label = _nifti(
        tmp / "s" / "img_seg.nii.gz", np.zeros((24, 20, 4), np.uint8), np.diag([1.5, 1.5, 10.0, 1.0])
    )
    return image, label, "label affine differs"


def label_bad_values(tmp):
    image = _nifti(tmp / "s" / "img.nii.gz", _image())
    values = np.zeros((24, 20, 4), np.float32)
    values[3, 3, 1] = 0.5
    label = _nifti(tmp / "s" / "img_label.nii.gz", values)
    return image, label, "non-integer"


def label_unknown_ids(tmp):
    image = _nifti(tmp / "s" / "img.nii.gz", _image())
    values = np.zeros((24, 20, 4), np.uint8)
    values[3, 3, 1] = 42
    return image, _nifti(tmp / "s" / "img_labels.nii.gz", values), r"unexpected label values \[42\]"


def corrupt_dicom(tmp):
    path = tmp / "bad.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7fgarbage" + bytes(range(256)) * 3)
    return path, path, "no readable DICOM image among 1 file"


def truncated_dicom_header(tmp):
    written = write_cine(tmp / "w", n_slices=1, n_frames=1)
    path = tmp / "cut.dcm"
    path.write_bytes(written.files[0].read_bytes()[:300])
    return path, path, "1 DICOM file.s. without a readable image header, first: cut.dcm"


def truncated_dicom_pixels(tmp):
    written = write_cine(tmp / "exam", n_slices=2, n_frames=2, rows=32, cols=32)
    victim = written.files[1]
    victim.write_bytes(victim.read_bytes()[:-700])
    return tmp / "exam", victim, "pixel data"


BUILDERS = [
    truncated_gz,
    truncated_nii,
    garbage_nifti,
    random_bytes_nifti,
    nan_voxels,
    zero_size,
    one_pixel,
    label_shape_mismatch,
    label_affine_mismatch,
    label_bad_values,
    label_unknown_ids,
    corrupt_dicom,
    truncated_dicom_header,
    truncated_dicom_pixels,
]


def _read(path):
    if path.is_dir() or path.suffix == ".dcm":
        return read_dicom_series(path)
    return read_nifti(path, with_labels=True)


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_reader_names_the_file_and_the_reason(tmp_path, build):
    path, culprit, reason = build(tmp_path)
    with pytest.raises(InputError, match=reason) as err:
        _read(path)
    assert err.value.path == str(culprit)


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
def test_cli_inspect_prints_one_error_line(tmp_path, capsys, build):
    path, culprit, reason = build(tmp_path)
    code = main(["data", "inspect", str(path)])
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: {path}") and str(culprit) in lines[0]
    assert re.search(reason, lines[0])
    assert "Traceback" not in captured.out + captured.err


def test_empty_folder_and_folder_without_images(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="folder is empty"):
        read_dicom_series(empty)
    assert main(["data", "inspect", str(empty)]) != 0
    assert capsys.readouterr().err.strip() == f"error: {empty}: folder is empty"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "README.txt").write_text("nothing here\n")
    (docs / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"no readable DICOM image among 2 file\(s\)"):
        read_dicom_study(docs)
    assert main(["data", "inspect", str(docs)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {docs}: not recognised") and "\n" not in err
    assert main(["data", "inspect", str(tmp_path / "missing")]) != 0
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: does not exist"


def test_folder_with_only_a_corrupt_dicom(tmp_path):
    (tmp_path / "exam").mkdir()
    corrupt_dicom(tmp_path / "exam")
    with pytest.raises(
        InputError, match=r"1 DICOM file\(s\) without a readable image header, first: bad.dcm"
    ):
        read_dicom_series(tmp_path / "exam")


def test_four_d_where_three_d_expected(tmp_path):
    path = _nifti(tmp_path / "cine.nii.gz", _image((8, 8, 2, 5)))
    with pytest.raises(InputError, match="expected a 3D image, got 4D"):
        read_nifti(path, expect_ndim=3)


def test_save_mask_refuses_bad_masks(tmp_path):
    series = read_nifti(_nifti(tmp_path / "img.nii.gz", _image()))
    with pytest.raises(InputError, match="non-integer"):
        save_mask(np.full((24, 20, 4), 0.5), series, tmp_path / "m.nii.gz")
    with pytest.raises(InputError, match=r"0\.\.255"):
        save_mask(np.full((24, 20, 4), 300), series, tmp_path / "m.nii.gz")


def test_root_with_one_bad_nifti_study(tmp_path, capsys):
    _nifti(tmp_path / "root" / "sub01" / "sax.nii.gz", _image())
    _nifti(tmp_path / "root" / "sub03" / "sax.nii.gz", _image())
    (tmp_path / "root" / "sub02").mkdir()
    truncated_gz(tmp_path / "root" / "sub02")
    code = main(["data", "inspect", str(tmp_path / "root")])
    out = capsys.readouterr().out
    assert code == 1
    assert "sub01" in out and "sub03" in out
    flat = out.replace("\n", "")
    assert "failed" in flat and "sub02" in flat and "truncated or corrupt" in flat


def test_root_with_one_bad_dicom_study(tmp_path, capsys):
    write_cine(tmp_path / "root" / "a", n_frames=2)
    (tmp_path / "root" / "b").mkdir()
    corrupt_dicom(tmp_path / "root" / "b")
    code = main(["data", "inspect", "--json", str(tmp_path / "root")])
    import json

    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [s["study"] for s in report["studies"]] == ["a"]
    assert report["failures"][0]["source"].endswith("b") and "DICOM" in report["failures"][0]["error"]

"""Write series and masks back to NIfTI in the input's geometry, with cmrfm JSON sidecars.

A mask written with :func:`save_mask` has exactly the shape and affine of the series it was
computed on, and the header's qform/sform (with their codes) of the NIfTI that series was read
from, so it overlays the input in any viewer. :func:`save_series` writes an image with the sidecar
that :func:`cmrfm.io.nifti.read_nifti` reads back (see that module for the sidecar keys);
:func:`save_study` writes a study folder for the ``nifti`` adapter, and :func:`save_series_dicom`
writes classic single-frame MR DICOM files that :mod:`cmrfm.io.dicom` reads back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm import __version__
from cmrfm.constants import Group, Sequence, View
from cmrfm.data.study import RAS_LPS, Series, Study, ras_to_lps
from cmrfm.errors import InputError
from cmrfm.io.nifti import NIFTI_SUFFIXES, nifti_stem

#: NIfTI code for "scanner-based anatomical coordinates" used when a series has no NIfTI header.
SCANNER_XFORM_CODE = 1

#: Label file suffix written by :func:`save_series` (``<stem>_seg.nii.gz``).
SEG_SUFFIX = "_seg"


def _nifti_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        path = path.with_name(path.name + ".nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _json_safe(value: Any) -> tuple[bool, Any]:
    """Returns ``(ok, value)`` with numpy scalars/arrays turned into plain JSON types."""
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return False, None
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False, None
    return True, value


def _header_xforms(like: Series) -> tuple[np.ndarray, int, np.ndarray, int]:
    """``(qform, qcode, sform, scode)`` to write: the source NIfTI header's, else the affine."""
    meta = like.metadata
    affine = like.affine
    qcode = int(meta.get("nifti_qform_code", SCANNER_XFORM_CODE))
    scode = int(meta.get("nifti_sform_code", SCANNER_XFORM_CODE))
    qform = np.asarray(meta.get("nifti_qform", affine), dtype=np.float64)
    sform = np.asarray(meta.get("nifti_sform", affine), dtype=np.float64)
    if "nifti_qform_code" not in meta:  # not read from NIfTI: both forms are the affine
        qcode = scode = SCANNER_XFORM_CODE
    return qform, qcode, sform, scode


def _write_nifti(array: np.ndarray, like: Series, path: Path, frame_ms: float | None = None) -> None:
    import nibabel as nib

    qform, qcode, sform, scode = _header_xforms(like)
    img = nib.Nifti1Image(array, sform if scode else qform)
    img.set_sform(sform, code=scode)
    img.set_qform(qform, code=qcode)
    zooms = list(like.spacing)
    if array.ndim == 4:
        zooms.append(frame_ms or 1.0)
    img.header.set_zooms(zooms[: array.ndim])
    img.header.set_xyzt_units(xyz="mm", t="msec")
    img.to_filename(str(path))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def save_mask(
    mask: np.ndarray,
    like: Series,
    path: str | Path,
    label_names: dict[int, str] | None = None,
) -> Path:
    """Writes a label mask in the geometry of ``like`` plus a ``<stem>.json`` label map.

    Args:
        mask: ``(X, Y, Z)`` (one frame) or ``(X, Y, Z, T)`` integer mask, internal label ids.
        like: The series the mask was computed on; its shape and affine are written.
        path: Output file (``.nii.gz`` appended when it has no NIfTI suffix).
        label_names: Label id -> name (default: ``like.label_names``).

    Returns:
        The path written.

    Raises:
        InputError: When the mask's shape does not match ``like``.
    """
    path = _nifti_path(path)
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[:, :, None]
    if mask.shape not in (like.shape[:3], like.shape):
        raise InputError(path, f"mask shape {mask.shape} does not match the series {like.shape}")
    if mask.dtype.kind == "f" and not np.all(mask == np.round(mask)):
        raise InputError(path, "mask holds non-integer values")
    if mask.size and (mask.min() < 0 or mask.max() > np.iinfo(np.uint8).max):
        raise InputError(path, "mask ids must lie in 0..255")
    _write_nifti(mask.astype(np.uint8), like, path, _frame_interval(like))
    names = like.label_names if label_names is None else label_names
    _write_json(
        path.parent / f"{nifti_stem(path)}.json",
        {
            "cmrfm_version": __version__,
            "label_convention": "internal",
            "label_names": {str(int(k)): str(v) for k, v in sorted(names.items())},
            "source": Path(like.source_paths[0]).name if like.source_paths else like.name,
        },
    )
    return path


def _frame_interval(series: Series) -> float | None:
    times = series.frame_times_ms
    if times is None or len(times) < 2:
        return None
    return float(np.median(np.diff(times)))


def series_sidecar(series: Series) -> dict[str, Any]:
    """The JSON sidecar :func:`save_series` writes (JSON-serialisable metadata only)."""
    metadata = {}
    for key, value in series.metadata.items():
        if key.startswith("nifti_"):
            continue
        ok, safe = _json_safe(value)
        if ok:
            metadata[key] = safe
    side: dict[str, Any] = {
        "cmrfm_version": __version__,
        "name": series.name,
        "sequence": None if series.sequence is None else str(series.sequence),
        "view": None if series.view is None else str(series.view),
        "frame_times_ms": None
        if series.frame_times_ms is None
        else [float(t) for t in series.frame_times_ms],
        "label_names": {str(int(k)): str(v) for k, v in sorted(series.label_names.items())},
        "label_convention": "internal",
        "spacing_known": series.spacing_known,
        "metadata": metadata,
    }
    if series.slice_positions is not None:
        side["slice_positions"] = np.asarray(series.slice_positions, dtype=float).tolist()
    return side


def save_series(series: Series, path: str | Path, write_labels: bool = True) -> Path:
    """Writes a series as NIfTI with a ``<stem>.json`` sidecar (and its labels as ``<stem>_seg``).

    A single-frame series is written 3D ``(X, Y, Z)``, a cine 4D ``(X, Y, Z, T)``. Labels, when
    present and ``write_labels``, go to ``<stem>_seg.nii.gz``: 4D with one mask per labelled frame
    (the sidecar's ``labelled_frames`` lists them unless every frame is labelled).

    Args:
        series: The series to write.
        path: Output image file (``.nii.gz`` appended when it has no NIfTI suffix).
        write_labels: Also write ``series.labels``.

    Returns:
        The image path written.
    """
    path = _nifti_path(path)
    image = series.image[..., 0] if series.num_frames == 1 else series.image  # (X, Y, Z[, T])
    _write_nifti(image.astype(np.float32), series, path, _frame_interval(series))
    side = series_sidecar(series)
    if write_labels and series.labels:
        frames = sorted(series.labels)
        seg_path = path.parent / f"{nifti_stem(path)}{SEG_SUFFIX}.nii.gz"
        if frames == [0] and series.num_frames == 1:
            seg = series.labels[0]  # (X, Y, Z)
        else:
            seg = np.stack([series.labels[t] for t in frames], axis=-1)  # (X, Y, Z, F)
            if frames != list(range(series.num_frames)):
                side["labelled_frames"] = frames
        _write_nifti(seg.astype(np.uint8), series, seg_path, _frame_interval(series))
    _write_json(path.parent / f"{nifti_stem(path)}.json", side)
    return path


#: File written beside the series of a study folder (read by the ``nifti`` adapter).
STUDY_FILE = "study.json"


def save_study(study: Study, folder: str | Path) -> Path:
    """Writes a study as a NIfTI study folder the ``nifti`` adapter reads back.

    Each series goes to ``<folder>/<series.name>.nii.gz`` (+ sidecar and ``_seg`` labels, see
    :func:`save_series`) and the clinical information to ``<folder>/study.json``.

    Args:
        study: The study to write.
        folder: Output folder (created); its name becomes the study id when read back.

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for series in study.series:
        save_series(series, folder / f"{series.name}.nii.gz")
    clinical: dict[str, Any] = {}
    for item in dataclasses.fields(study.clinical):
        value = getattr(study.clinical, item.name)
        if item.name == "extra":
            value = {k: v for k, v in value.items() if _json_safe(v)[0]} or None
        ok, safe = _json_safe(str(value) if isinstance(value, Group) else value)
        if ok and value is not None:
            clinical[item.name] = safe
    _write_json(folder / STUDY_FILE, {"cmrfm_version": __version__, "clinical": clinical})
    return folder


#: Stored-value range used when writing float images as 16-bit DICOM with a rescale.
DICOM_MAX_STORED = 65535


def _dicom_description(series: Series) -> str:
    """A SeriesDescription the reader's keyword rules map back to the series' sequence and view."""
    words = [series.name]
    if series.sequence is not None and series.sequence != Sequence.OTHER:
        words.append(str(series.sequence))
    if series.view is not None and series.view != View.OTHER:
        words.append(str(series.view))
    return " ".join(words)[:64]


def save_series_dicom(
    series: Series,
    folder: str | Path,
    study_uid: str | None = None,
    series_number: int = 1,
) -> list[Path]:
    """Writes a series as classic single-frame MR DICOM files, one per slice and frame.

    Geometry comes from the affine (RAS converted to DICOM LPS): ``ImagePositionPatient`` of
    slice ``k`` is ``affine @ (0, 0, k)`` (or ``slice_positions[k]``), ``ImageOrientationPatient``
    the first two affine columns. Intensities are stored as 16-bit values with
    ``RescaleSlope``/``RescaleIntercept``; frame times go to ``TriggerTime``; the
    ``SeriesDescription`` names sequence and view so that :mod:`cmrfm.io.dicom` recovers them.
    Patient attributes are written empty.

    Args:
        series: The series to write.
        folder: Output folder (created).
        study_uid: StudyInstanceUID shared by the series of one study (default: a new UID).
        series_number: SeriesNumber.

    Returns:
        The files written, slice-major.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = ras_to_lps(series.affine)
    col_step, row_step = lps[:3, 0], lps[:3, 1]  # voxel steps along i (columns) and j (rows)
    row_dir, col_dir = col_step / np.linalg.norm(col_step), row_step / np.linalg.norm(row_step)
    positions = (
        np.asarray(series.slice_positions) @ RAS_LPS[:3, :3].T  # (Z, 3) RAS -> LPS
        if series.slice_positions is not None
        else np.stack([lps[:3, 3] + k * lps[:3, 2] for k in range(series.num_slices)])
    )
    low, high = float(series.image.min()), float(series.image.max())
    slope = (high - low) / DICOM_MAX_STORED if high > low else 1.0
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    meta = series.metadata
    paths = []
    for k in range(series.num_slices):
        for t in range(series.num_frames):
            instance = k * series.num_frames + t + 1
            sop_uid = generate_uid()
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
            ds.PatientName, ds.PatientID, ds.PatientBirthDate = "", "", ""
            ds.Modality = "MR"
            ds.Manufacturer = str(meta.get("manufacturer") or "cmrfm")
            if meta.get("field_strength_t"):
                ds.MagneticFieldStrength = float(meta["field_strength_t"])
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
                study_uid,
                series_uid,
                frame_uid,
            )
            ds.SeriesNumber, ds.InstanceNumber = series_number, instance
            ds.SeriesDescription = _dicom_description(series)
            ds.ImagePositionPatient = [float(v) for v in positions[k]]
            ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))]
            ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
            if series.frame_times_ms is not None:
                ds.TriggerTime = float(series.frame_times_ms[t])
            plane = series.image[:, :, k, t].T  # (X, Y) -> (rows, columns)
            stored = np.round((plane - low) / slope).astype(np.uint16)
            ds.Rows, ds.Columns = stored.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:.10g}", f"{low:.10g}", "US"
            ds.PixelData = np.ascontiguousarray(stored).tobytes()
            path = folder / f"IM_{instance:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths

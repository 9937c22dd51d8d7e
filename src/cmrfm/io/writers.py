"""Write series and masks back to NIfTI in the input's geometry, with cmrfm JSON sidecars.

A mask written with :func:`save_mask` has exactly the shape and affine of the series it was
computed on, and the header's qform/sform (with their codes) of the NIfTI that series was read
from, so it overlays the input in any viewer. :func:`save_series` writes an image with the sidecar
that :func:`cmrfm.io.nifti.read_nifti` reads back (see that module for the sidecar keys).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm import __version__
from cmrfm.data.study import Series
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

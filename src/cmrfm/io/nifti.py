"""Read NIfTI images (2D/3D/4D) into :class:`~cmrfm.data.study.Series`, geometry kept.

The voxel order is kept as stored, ``(X, Y, Z, T)``, and ``Series.affine`` is nibabel's RAS+
voxel-to-mm affine. Some public datasets (ACDC) store an sform whose columns are unit vectors while
the true voxel size sits in ``pixdim``; the reader then keeps the directions and rescales them to
``pixdim`` (``metadata["affine_rescaled_to_pixdim"] = True``). The header's original qform/sform and
their codes are kept in ``metadata`` (``nifti_qform``, ``nifti_sform``, ``nifti_qform_code``,
``nifti_sform_code``) so that :func:`cmrfm.io.writers.save_mask` writes masks with exactly the
input's header geometry.

Conventions for files beside an image ``<stem>.nii.gz`` (``<stem>.nii`` likewise):

* **Sidecar** ``<stem>.json`` (optional). cmrfm keys, all optional::

      {
        "name": "sax_cine",                 series name (default: the stem)
        "sequence": "cine",                 a constants.Sequence value
        "view": "sax",                      a constants.View value
        "frame_times_ms": [0.0, 40.0],      one per frame
        "label_names": {"1": "LV"},         label id -> name
        "label_convention": "internal",     how the label file's ids map to constants.Label:
                                            "internal" | "acdc" | "mnms" | "emidec" or an
                                            explicit {"<file id>": <internal id>} object
        "labelled_frames": [0, 9],          frames of a 4D label file whose T is smaller than the
                                            image's (default: label frame t is image frame t)
        "label_frame": 0,                   the image frame a 3D label belongs to (default 0)
        "slice_positions": [[x, y, z]],     RAS position of each slice, for uneven stacks
        "spacing_known": true,
        "metadata": {"vendor": "GE"}        anything JSON-serialisable, copied to Series.metadata
      }

  Keys written by dcm2niix (``Manufacturer``, ``ManufacturersModelName``,
  ``MagneticFieldStrength``, ``SeriesDescription``, ``ProtocolName``, ``RepetitionTime``,
  ``EchoTime``, ``FlipAngle``) are understood too; sequence and view are then guessed from the
  descriptions. Identifiers in a sidecar (patient name/ID/birth date) are never copied.
* **Labels** ``<stem>_gt``, ``<stem>_seg``, ``<stem>_label`` or ``<stem>_labels`` (``.nii.gz`` or
  ``.nii``), read only when asked for. A 3D label is the mask of frame ``label_frame`` (0); a 4D
  label holds one mask per frame. Its shape must equal the image's and its affine must match.
  Ids are mapped with the sidecar's ``label_convention`` (default: internal ids).

The simulator writes cohorts as ``<subject>/<series>.nii.gz`` + ``<series>.json`` +
``<series>_seg.nii.gz`` (4D labels, internal convention); :func:`cmrfm.io.writers.save_series`
writes exactly this layout.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm.constants import LABEL_NAMES, Label, Sequence, View
from cmrfm.data.study import Series
from cmrfm.errors import InputError
from cmrfm.io.describe import error_text, guess_sequence, guess_view, sanitise_text, vendor_name

log = logging.getLogger(__name__)

#: File name endings of NIfTI images, longest first.
NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: Suffixes of label files paired with an image of the same stem.
LABEL_SUFFIXES = ("_gt", "_seg", "_label", "_labels")

#: Named label conventions: file id -> internal :class:`Label` id.
LABEL_CONVENTIONS: dict[str, dict[int, int]] = {
    "internal": {int(v): int(v) for v in Label},
    "acdc": {0: Label.BACKGROUND, 1: Label.RV, 2: Label.MYO, 3: Label.LV},
    "mnms": {0: Label.BACKGROUND, 1: Label.LV, 2: Label.MYO, 3: Label.RV},
    "emidec": {0: Label.BACKGROUND, 1: Label.LV, 2: Label.MYO, 3: Label.INFARCT, 4: Label.MVO},
}

#: Image and label affines may differ by float noise only (mm).
AFFINE_ATOL_MM = 1e-3

#: Relative disagreement between affine column norms and pixdim that triggers the rescale.
SPACING_RTOL = 1e-3

#: NIfTI time units -> milliseconds per unit.
_TIME_UNIT_MS = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}

#: dcm2niix sidecar key -> (metadata key, scale to cmrfm units).
_BIDS_KEYS: dict[str, tuple[str, float]] = {
    "MagneticFieldStrength": ("field_strength_t", 1.0),
    "RepetitionTime": ("repetition_time_ms", 1000.0),
    "EchoTime": ("echo_time_ms", 1000.0),
    "FlipAngle": ("flip_angle_deg", 1.0),
    "PixelBandwidth": ("pixel_bandwidth_hz", 1.0),
}

#: Sidecar keys that must never reach Series.metadata.
_IDENTIFIER_KEYS = {"patientname", "patientid", "patientbirthdate", "patientsex", "patientage"}


def is_nifti(path: Path) -> bool:
    """True when ``path`` names a NIfTI file (by its suffix)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii.gz``/``.nii``."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_label_file(path: Path) -> bool:
    """True for ``<stem>_gt/_seg/_label/_labels.nii(.gz)`` whose image ``<stem>`` exists beside it.

    A file ending in ``_seg`` with no image beside it is treated as an image in its own right.
    """
    if not is_nifti(path):
        return False
    stem = nifti_stem(path)
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            base = stem[: -len(suffix)]
            if any((path.parent / f"{base}{ext}").exists() for ext in NIFTI_SUFFIXES):
                return True
    return False


def find_label_file(path: Path) -> Path | None:
    """The label file paired with image ``path`` (``<stem>_gt`` etc.), or ``None``."""
    stem = nifti_stem(path)
    for suffix in LABEL_SUFFIXES:
        for ext in NIFTI_SUFFIXES:
            candidate = path.parent / f"{stem}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def sidecar_path(path: Path) -> Path:
    """``<stem>.json`` beside a NIfTI file."""
    return path.parent / f"{nifti_stem(path)}.json"


def read_sidecar(path: Path) -> dict[str, Any]:
    """Reads the JSON sidecar of NIfTI ``path``; ``{}`` when there is none.

    Raises:
        InputError: When the sidecar exists but is not a JSON object.
    """
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(side, f"sidecar is not valid JSON ({error_text(err)})") from None
    if not isinstance(data, dict):
        raise InputError(side, "sidecar must hold a JSON object")
    _check_sidecar_types(data, side)
    return data


def _is_number_list(value: Any, integers: bool = False) -> bool:
    kinds = (int,) if integers else (int, float)
    return isinstance(value, list) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)


def _check_sidecar_types(data: dict[str, Any], where: Path) -> None:
    """Refuses cmrfm sidecar keys of the wrong JSON type (dcm2niix keys are free-form)."""
    checks = {
        "name": lambda v: isinstance(v, str) and v.strip() != "",
        "metadata": lambda v: isinstance(v, dict),
        "label_names": lambda v: isinstance(v, dict),
        "frame_times_ms": _is_number_list,
        "labelled_frames": lambda v: _is_number_list(v, integers=True),
        "label_frame": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "slice_positions": lambda v: (
            isinstance(v, list) and all(_is_number_list(p) and len(p) == 3 for p in v)
        ),
        "spacing_known": lambda v: isinstance(v, bool),
    }
    for key, ok in checks.items():
        if data.get(key) is not None and not ok(data[key]):
            raise InputError(where, f"sidecar key {key!r} has an invalid value {data[key]!r:.80}")


def _load(path: Path) -> tuple[Any, np.ndarray]:
    """Loads header and data; every failure becomes an InputError naming the file."""
    import nibabel as nib

    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel, gzip and zlib raise many types on corrupt files
        raise InputError(path, f"not a readable NIfTI file ({error_text(err)})") from None
    try:
        data = np.asarray(img.dataobj)
    except Exception as err:
        raise InputError(
            path, f"image data cannot be read, file truncated or corrupt ({error_text(err)})"
        ) from None
    return img, data


def _squeeze_extra_dims(data: np.ndarray, path: Path) -> np.ndarray:
    """Drops singleton dimensions beyond the fourth ``(X, Y, Z, T, 1, ...)``."""
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 4 and data.shape[3] == 1:  # (X, Y, Z, 1, T): NIfTI's 5th dim used for time
        data = data[:, :, :, 0]
    if data.ndim > 4:
        raise InputError(path, f"expected a 2D, 3D or 4D image, got shape {data.shape}")
    return data


def _check_finite(data: np.ndarray, path: Path) -> None:
    if data.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(path, f"{bad} of {data.size} voxels are NaN or infinite")


def _geometry(img: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """RAS affine (rescaled to pixdim when the sform has unit columns) and header geometry."""
    header = img.header
    affine = np.asarray(img.affine, dtype=np.float64)
    meta: dict[str, Any] = {}
    if hasattr(header, "get_qform"):
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        meta["nifti_qform_code"] = int(qcode)
        meta["nifti_sform_code"] = int(scode)
        if qform is not None:
            meta["nifti_qform"] = np.asarray(qform).tolist()
        if sform is not None:
            meta["nifti_sform"] = np.asarray(sform).tolist()
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    zooms = np.concatenate([zooms, norms[zooms.size :]])  # a 2D file has no slice pixdim
    if np.all(zooms > 0) and np.all(norms > 0) and not np.allclose(norms, zooms, rtol=SPACING_RTOL):
        affine = affine.copy()
        affine[:3, :3] = affine[:3, :3] / norms[None, :] * zooms[None, :]  # keep directions
        meta["affine_rescaled_to_pixdim"] = True
    return affine, meta


def _header_frame_times(img: Any, num_frames: int) -> np.ndarray | None:
    """Frame times from pixdim[4] and the time unit, when the header has them."""
    if num_frames < 2 or not hasattr(img.header, "get_xyzt_units"):
        return None
    unit = img.header.get_xyzt_units()[1]
    step = float(img.header["pixdim"][4])
    if unit not in _TIME_UNIT_MS or not step > 0:
        return None
    return np.arange(num_frames, dtype=np.float64) * step * _TIME_UNIT_MS[unit]


def _enum(value: Any, enum: type, where: Path, key: str) -> Any:
    if value is None:
        return None
    try:
        return enum(str(value).lower())
    except ValueError:
        valid = ", ".join(e.value for e in enum)
        raise InputError(where, f"unknown {key} {value!r} in sidecar; valid: {valid}") from None


#: ACDC image files (``patientNNN_frameXX`` / ``patientNNN_4d``), recognised beside an ``Info.cfg``.
_ACDC_FILE = re.compile(r"^patient\d+_(frame\d+|4d)$")


def infer_label_convention(image_path: Path) -> str | None:
    """The label convention implied by where a file lives, for files whose sidecar names none.

    A lone ACDC frame (``patient001_frame01.nii.gz`` beside its ``Info.cfg``) uses ACDC's ids
    (1 RV, 3 LV), which read as internal ids would swap LV and RV silently. ``None`` = internal.
    """
    if (image_path.parent / "Info.cfg").is_file() and _ACDC_FILE.match(nifti_stem(image_path)):
        return "acdc"
    return None


def label_table(convention: Any, where: Path) -> dict[int, int]:
    """The file id -> internal id table for a sidecar's ``label_convention``.

    Raises:
        InputError: For an unknown convention name or a malformed table.
    """
    if convention is None:
        return LABEL_CONVENTIONS["internal"]
    if isinstance(convention, str):
        if convention.lower() not in LABEL_CONVENTIONS:
            valid = ", ".join(LABEL_CONVENTIONS)
            raise InputError(where, f"unknown label_convention {convention!r}; valid: {valid} or a mapping")
        return LABEL_CONVENTIONS[convention.lower()]
    if isinstance(convention, dict):
        try:
            table = {int(k): int(v) for k, v in convention.items()}
        except (TypeError, ValueError):
            raise InputError(where, "label_convention must map integer ids to integer ids") from None
        if any(v not in LABEL_NAMES for v in table.values()):
            raise InputError(where, f"label_convention maps to ids outside {sorted(LABEL_NAMES)}")
        table.setdefault(0, 0)
        return table
    raise InputError(where, "label_convention must be a name or a mapping")


def map_label_ids(mask: np.ndarray, table: dict[int, int], path: Path) -> np.ndarray:
    """Maps a label volume's ids to internal ids; unknown or non-integer values are an InputError."""
    mask = np.asarray(mask)
    if mask.dtype.kind in "fc":
        if not np.all(np.isfinite(mask)):
            raise InputError(path, "label volume holds NaN or infinite values")
        if not np.all(mask == np.round(mask)):
            raise InputError(path, "label volume holds non-integer values")
    ids = np.unique(mask).astype(np.int64)
    unknown = [int(v) for v in ids if int(v) not in table]
    if unknown:
        raise InputError(path, f"unexpected label values {unknown}; expected some of {sorted(table)}")
    lut = np.zeros(max(table) + 1, dtype=np.uint8)
    for source, internal in table.items():
        lut[source] = internal
    return lut[mask.astype(np.int64)]


def _sidecar_metadata(side: dict[str, Any]) -> dict[str, Any]:
    """Series.metadata from a sidecar: cmrfm ``metadata`` plus understood dcm2niix keys."""
    meta: dict[str, Any] = {}
    for key, value in (side.get("metadata") or {}).items():
        if key.lower().replace("_", "") not in _IDENTIFIER_KEYS:
            meta[key] = value
    for key, (name, scale) in _BIDS_KEYS.items():
        if isinstance(side.get(key), int | float):
            meta.setdefault(name, float(side[key]) * scale)
    if side.get("Manufacturer"):
        meta.setdefault("vendor", vendor_name(side["Manufacturer"]))
        meta.setdefault("manufacturer", sanitise_text(side["Manufacturer"]))
    if side.get("ManufacturersModelName"):
        meta.setdefault("model", sanitise_text(side["ManufacturersModelName"]))
    if side.get("SeriesDescription"):
        meta.setdefault("series_description", sanitise_text(side["SeriesDescription"]))
    return meta


def _read_labels(
    image_path: Path,
    label_path: Path,
    shape: tuple[int, int, int, int],
    affine: np.ndarray,
    side: dict[str, Any],
) -> dict[int, np.ndarray]:
    """Reads, checks and maps a label file into ``{frame: (X, Y, Z) uint8}``."""
    img, data = _load(label_path)
    data = _squeeze_extra_dims(data, label_path)
    if data.ndim == 2:
        data = data[:, :, None]
    label_affine, _ = _geometry(img)
    if data.shape[:3] != shape[:3]:
        raise InputError(label_path, f"label shape {data.shape[:3]} differs from image shape {shape[:3]}")
    if not np.allclose(label_affine, affine, atol=AFFINE_ATOL_MM):
        worst = float(np.max(np.abs(label_affine - affine)))
        raise InputError(
            label_path, f"label affine differs from the image's {image_path.name} (by up to {worst:.3g} mm)"
        )
    table = label_table(
        side.get("label_convention") or infer_label_convention(image_path), sidecar_path(image_path)
    )
    data = map_label_ids(data, table, label_path)
    num_frames = shape[3]
    if data.ndim == 3:
        frame = int(side.get("label_frame", 0))
        if not 0 <= frame < num_frames:
            raise InputError(label_path, f"label_frame {frame} outside 0..{num_frames - 1}")
        return {frame: data}
    frames = side.get("labelled_frames")
    if frames is None:
        if data.shape[3] == num_frames:
            frames = list(range(num_frames))
        elif data.shape[3] == 1:
            frames = [int(side.get("label_frame", 0))]
        else:
            raise InputError(
                label_path,
                f"label has {data.shape[3]} frames, image has {num_frames}; "
                "list them in the sidecar's labelled_frames",
            )
    if len(frames) != data.shape[3]:
        raise InputError(label_path, f"labelled_frames lists {len(frames)} frames, label has {data.shape[3]}")
    return {int(t): data[..., i] for i, t in enumerate(frames)}  # each (X, Y, Z)


def read_nifti(
    path: str | Path,
    *,
    with_labels: bool = False,
    label_path: str | Path | None = None,
    expect_ndim: int | SequenceABC[int] | None = None,
    name: str | None = None,
) -> Series:
    """Reads one NIfTI image (and optionally its labels) into a :class:`Series`.

    Args:
        path: A ``.nii`` or ``.nii.gz`` image.
        with_labels: Also read the paired label file (``<stem>_gt`` etc.) when there is one.
        label_path: An explicit label file (implies ``with_labels``).
        expect_ndim: Refuse files whose stored dimensionality (trailing singleton dimensions
            beyond the third ignored) is not this (or one of these), e.g. ``3`` to refuse a 4D cine.
        name: Series name (default: the sidecar's ``name``, else the file stem).

    Returns:
        The series: image ``(X, Y, Z, T)`` float32, RAS affine, sidecar sequence/view/frame times.

    Raises:
        InputError: On a missing, truncated or corrupt file, NaN/inf voxels, an unexpected number of
            dimensions, a degenerate size or affine, or labels that do not match the image.
    """
    path = Path(path)
    img, data = _load(path)
    stored_ndim = data.ndim
    while stored_ndim > 3 and data.shape[stored_ndim - 1] == 1:
        stored_ndim -= 1
    if expect_ndim is not None:
        allowed = {expect_ndim} if isinstance(expect_ndim, int) else set(expect_ndim)
        if stored_ndim not in allowed:
            want = " or ".join(f"{n}D" for n in sorted(allowed))
            raise InputError(path, f"expected a {want} image, got {stored_ndim}D of shape {data.shape}")
    data = _squeeze_extra_dims(data, path)
    _check_finite(data, path)
    if data.ndim == 2:
        data = data[:, :, None, None]
    elif data.ndim == 3:
        data = data[..., None]
    if min(data.shape) == 0 or data.shape[0] < 2 or data.shape[1] < 2:
        raise InputError(path, f"image of shape {data.shape[:3]} is empty or too small to be CMR")
    image = data.astype(np.float32)  # nibabel's dataobj already applied scl_slope/scl_inter
    _check_finite(image, path)  # float64 values beyond float32's range
    affine, meta = _geometry(img)
    side = read_sidecar(path)
    where = sidecar_path(path)
    meta.update(_sidecar_metadata(side))
    texts = [side.get("SeriesDescription"), side.get("ProtocolName")]
    sequence = _enum(side.get("sequence"), Sequence, where, "sequence") or guess_sequence(texts)
    view = _enum(side.get("view"), View, where, "view") or guess_view(texts)
    times = side.get("frame_times_ms")
    frame_times = None if times is None else np.asarray(times, dtype=np.float64)
    if frame_times is not None and frame_times.shape != (image.shape[3],):
        raise InputError(
            where, f"frame_times_ms has {frame_times.size} values, image has {image.shape[3]} frames"
        )
    if frame_times is None:
        frame_times = _header_frame_times(img, image.shape[3])
    positions = side.get("slice_positions")
    labels: dict[int, np.ndarray] = {}
    if label_path is not None or with_labels:
        found = Path(label_path) if label_path is not None else find_label_file(path)
        if found is not None:
            labels = _read_labels(path, found, image.shape, affine, side)
            meta["label_file"] = found.name
    label_names = dict(LABEL_NAMES)
    if isinstance(side.get("label_names"), dict):
        label_names = {int(k): str(v) for k, v in side["label_names"].items()}
    return Series(
        name=name or str(side.get("name") or nifti_stem(path)),
        image=image,
        affine=affine,
        sequence=sequence,
        view=view,
        frame_times_ms=frame_times,
        slice_positions=None if positions is None else np.asarray(positions, dtype=np.float64),
        labels=labels,
        label_names=label_names,
        spacing_known=bool(side.get("spacing_known", True)),
        metadata=meta,
        source_paths=[str(path)],
    )


def list_nifti_images(folder: Path) -> list[Path]:
    """NIfTI images directly inside ``folder`` (label files excluded), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not is_label_file(p))

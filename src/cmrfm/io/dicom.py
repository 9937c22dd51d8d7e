"""Read DICOM folders (classic single-frame or enhanced multi-frame MR) into series.

How a folder becomes series:

1. Every file under the folder is tried (recursively, hidden files skipped); files that are not
   DICOM, or are DICOM without an image (DICOMDIR, reports), are skipped silently. Headers are
   read with ``stop_before_pixels``. A folder with no readable DICOM image is an
   :class:`~cmrfm.errors.InputError`.
2. Images are grouped by ``SeriesInstanceUID``; a series whose images differ in size,
   orientation, pixel spacing or ``ImageType`` (a three-plane localiser; magnitude and phase images
   of a PSIR series) is split into one series per kind.
   Colour images (secondary captures, screenshots) are skipped.
3. Enhanced multi-frame files contribute one image per frame, with per-frame (else shared)
   functional groups: ``PlanePositionSequence``, ``PlaneOrientationSequence``,
   ``PixelMeasuresSequence``, ``CardiacSynchronizationSequence`` and
   ``PixelValueTransformationSequence``.
4. Within a series, images are grouped into slices by their position along the slice normal
   ``ImagePositionPatient · (row × column)`` (cine stored as many files at one position), slices
   sorted along the normal, frames within a slice sorted by trigger time then ``InstanceNumber``
   (Canon often has no ``TriggerTime``: instance order is used).
5. The affine is built in DICOM LPS from ``ImageOrientationPatient``, ``PixelSpacing`` and the
   true slice step (first to last position), then converted to RAS+. Uneven slice gaps are kept in
   ``Series.slice_positions``; a disagreement with ``SpacingBetweenSlices`` is reported in
   ``metadata["slice_spacing_mismatch"]``.
6. Cines stored as one series per slice (common on Siemens) are joined into one stack when at
   least three single-slice series share size, orientation, spacing, frame count and sequence
   (``metadata["merged_series"]``); ``merge_slices=False`` keeps them apart.
7. Pixel data is decoded by pydicom (compressed transfer syntaxes through its handlers and
   pylibjpeg) and ``RescaleSlope``/``RescaleIntercept`` are applied. Philips' private
   ``MRScaleSlope`` (2005,100E) is recorded in ``metadata["philips_scale_slope"]``, not applied.

Acquisition metadata (vendor, model, field strength, TR/TE/flip angle, pixel bandwidth, sanitised
series description) goes to ``Series.metadata``; patient name, ID and birth date are read only to
redact them from free text and never stored. Sequence and view are guessed from the series
description/protocol name; without words a multi-slice ECG-gated gradient-echo series with frames
spanning the cardiac cycle is taken as a SAX cine.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import struct
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from cmrfm.constants import Sequence, View
from cmrfm.data.study import RAS_LPS, Series, Study
from cmrfm.errors import InputError
from cmrfm.io.describe import error_text, guess_sequence, guess_view, sanitise_text, slug, vendor_name

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Images closer than this along the slice normal belong to the same slice (mm).
SAME_SLICE_TOL_MM = 0.05

#: Slice gaps differing from their mean by more than this are "uneven" (mm).
UNEVEN_GAP_TOL_MM = 0.05

#: Header SpacingBetweenSlices and the spacing measured from positions may differ by this (mm).
SPACING_MISMATCH_TOL_MM = 0.1

#: Decimals used to compare orientations and pixel spacings when splitting a series by geometry.
GEOMETRY_DECIMALS = 3

#: A gated series whose frames span at least this is a cine (ms).
MIN_CINE_SPAN_MS = 100.0

#: A cine with at least this many parallel slices is taken as a short-axis stack.
MIN_SAX_STACK_SLICES = 4

#: Fewest single-slice series of one geometry that are joined into a stack.
MIN_MERGED_SLICES = 3

#: Header files tried per folder when sampling StudyInstanceUIDs.
MAX_FILES_TRIED_PER_DIR = 20

#: Suffixes of files that may be DICOM without the 128-byte preamble.
_RAW_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}

#: Enhanced MR SOP classes (multi-frame with functional groups).
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}

#: Philips private MR scale slope.
PHILIPS_SCALE_SLOPE_TAG = (0x2005, 0x100E)


@dataclass
class FrameRef:
    """One 2D image: a single-frame file or one frame of a multi-frame file.

    Attributes:
        path: The file.
        frame: Frame index in a multi-frame file, ``None`` for a single-frame file.
        position: ``ImagePositionPatient`` (LPS, mm), or ``None`` when absent.
        orientation: ``ImageOrientationPatient`` (6 direction cosines), or ``None``.
        pixel_spacing: ``(row spacing, column spacing)`` in mm, or ``None``.
        trigger_ms: Trigger time (ms) when known.
        instance: ``InstanceNumber`` (0 when absent).
        slope: Rescale slope.
        intercept: Rescale intercept.
        rows: Image rows.
        columns: Image columns.
        image_type: ``ImageType`` values (magnitude and phase images of one series differ here).
    """

    path: Path
    frame: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    trigger_ms: float | None
    instance: int
    slope: float
    intercept: float
    rows: int
    columns: int
    image_type: tuple[str, ...] = ()


@dataclass
class DicomSeriesLayout:
    """Where each image of a series sits, before any pixel is read.

    Attributes:
        name: Series name (from series number and sanitised description).
        grid: ``grid[k][t]`` is the image of slice ``k`` (sorted along the normal) at frame ``t``.
        affine: RAS+ voxel-to-mm affine.
        slice_positions: RAS position of each slice when the gaps are uneven, else ``None``.
        frame_times_ms: Trigger time of each frame (median over slices) when known.
        sequence: Guessed sequence.
        view: Guessed view.
        metadata: Identifier-free acquisition metadata.
        spacing_known: False when the files carry no geometry.
        study_uid: The StudyInstanceUID (used only to derive an opaque study key).
        identifiers: Patient name parts / ID / birth date, kept only to redact them; never output.
        header: A representative pydicom header (not output; used to rebuild merged stacks).
    """

    name: str
    grid: list[list[FrameRef]]
    affine: np.ndarray
    slice_positions: np.ndarray | None
    frame_times_ms: np.ndarray | None
    sequence: Sequence | None
    view: View | None
    metadata: dict[str, Any]
    spacing_known: bool = True
    study_uid: str = ""
    identifiers: set[str] = field(default_factory=set, repr=False)
    header: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(X, Y, Z, T)`` of the series this layout loads."""
        first = self.grid[0][0]
        return (first.columns, first.rows, len(self.grid), len(self.grid[0]))


def _quiet(func: Callable[P, R]) -> Callable[P, R]:
    """Silences pydicom's warnings about non-conformant values (common in real exports)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
            return func(*args, **kwargs)

    return wrapper


def _dcmread(path: Path, **kwargs: Any) -> Any:
    import pydicom

    return pydicom.dcmread(str(path), **kwargs)


def has_dicom_preamble(path: Path) -> bool:
    """True when the file has the 128-byte preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@_quiet
def read_header(path: Path) -> Any | None:
    """Reads a DICOM header without pixels; ``None`` when the file is not DICOM.

    Raises:
        InputError: When the file announces itself as DICOM (preamble) but cannot be parsed.
    """
    from pydicom.errors import InvalidDicomError

    try:
        return _dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        if path.suffix.lower() not in _RAW_DICOM_SUFFIXES:
            return None
    except Exception as err:  # truncated or corrupt: pydicom raises many types
        if has_dicom_preamble(path):
            raise InputError(path, f"corrupt DICOM header ({error_text(err)})") from None
        return None
    try:  # DICOM without preamble (older exports)
        ds = _dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None
    if "Rows" not in ds or "Columns" not in ds or "SOPClassUID" not in ds:
        return None
    return ds


def iter_files(folder: Path) -> Iterator[Path]:
    """Every non-hidden file under ``folder`` (recursively, sorted), or ``folder`` if it is a file."""
    if folder.is_file():
        yield folder
        return
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


@_quiet
def sample_study_uids(folder: Path) -> set[str]:
    """StudyInstanceUIDs seen in ``folder``: one readable DICOM header per sub-folder.

    Cheap enough for layout detection: at most :data:`MAX_FILES_TRIED_PER_DIR` files are tried in
    each folder.
    """
    uids: set[str] = set()
    if folder.is_file():
        folders = [(folder.parent, [folder.name])]
    else:
        folders = []
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            folders.append((Path(root), sorted(f for f in files if not f.startswith("."))))
    for root, names in folders:
        for name in names[:MAX_FILES_TRIED_PER_DIR]:
            try:
                ds = read_header(root / name)
            except InputError:
                continue
            if ds is not None and "Rows" in ds:
                uids.add(str(ds.get("StudyInstanceUID", "")))
                break
    return uids


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) else None


def _int(value: Any) -> int | None:
    """An integer attribute, ``None`` when absent or malformed."""
    number = _float(value)
    return None if number is None else int(number)


def _group_value(ds: Any, frame: int | None, sequence: str, attr: str) -> Any:
    """An attribute from the per-frame, then shared functional group, then the top level."""
    items = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if frame < len(per_frame):
            items.append(per_frame[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        items.append(ds.SharedFunctionalGroupsSequence[0])
    for item in items:
        if sequence in item and len(item[sequence].value) and attr in item[sequence].value[0]:
            return item[sequence].value[0].get(attr)
    return ds.get(attr)


def _philips_scale_slope(ds: Any) -> float | None:
    if PHILIPS_SCALE_SLOPE_TAG not in ds:
        return None
    value = ds[PHILIPS_SCALE_SLOPE_TAG].value
    if isinstance(value, bytes) and len(value) == 4:  # implicit VR: raw little-endian float
        value = struct.unpack("<f", value)[0]
    return _float(value)


def _trigger_ms(ds: Any, frame: int | None) -> float | None:
    """Trigger delay of an image: the cardiac-synchronisation group, else ``TriggerTime``."""
    if frame is not None:
        for attr in ("NominalCardiacTriggerDelayTime", "ActualCardiacTriggerDelayTime"):
            value = _float(_group_value(ds, frame, "CardiacSynchronizationSequence", attr))
            if value is not None:
                return value
    for attr in ("TriggerTime", "NominalCardiacTriggerDelayTime"):
        value = _float(ds.get(attr))
        if value is not None:
            return value
    return None


def _frame_refs(path: Path, ds: Any) -> list[FrameRef]:
    """One :class:`FrameRef` per image in the file."""
    count = _int(ds.get("NumberOfFrames")) or 1
    multi = count > 1 or str(ds.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES
    raw_type = ds.get("ImageType") or ()
    image_type = (str(raw_type),) if isinstance(raw_type, str) else tuple(str(v).upper() for v in raw_type)
    refs = []
    for index in range(count):
        frame = index if multi else None
        position = _group_value(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _group_value(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _group_value(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
        slope = _float(_group_value(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(_group_value(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
        instance = ds.get("InstanceNumber")
        if multi:
            stack = _group_value(ds, frame, "FrameContentSequence", "TemporalPositionIndex")
            instance = stack if stack is not None else index
        refs.append(
            FrameRef(
                path=path,
                frame=frame,
                position=None if position is None else np.asarray([float(v) for v in position]),
                orientation=None if orientation is None else np.asarray([float(v) for v in orientation]),
                pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
                trigger_ms=_trigger_ms(ds, frame),
                instance=_int(instance) or 0,
                slope=1.0 if slope in (None, 0.0) else slope,
                intercept=intercept or 0.0,
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                image_type=image_type,
            )
        )
    return refs


def _geometry_key(ref: FrameRef) -> tuple:
    orientation = None if ref.orientation is None else tuple(np.round(ref.orientation, GEOMETRY_DECIMALS))
    spacing = None if ref.pixel_spacing is None else tuple(np.round(ref.pixel_spacing, GEOMETRY_DECIMALS + 1))
    return (ref.rows, ref.columns, orientation, spacing, ref.image_type)


def _cluster_slices(refs: list[FrameRef], normal: np.ndarray) -> list[list[FrameRef]]:
    """Groups images by position along ``normal`` (ascending); unknown positions by instance."""
    if any(r.position is None for r in refs):
        return [[r] for r in sorted(refs, key=lambda r: (r.instance, r.frame or 0))]
    ordered = sorted(refs, key=lambda r: float(r.position @ normal))
    slices: list[list[FrameRef]] = []
    last = None
    for ref in ordered:
        distance = float(ref.position @ normal)
        if last is None or distance - last > SAME_SLICE_TOL_MM:
            slices.append([])
            last = distance
        slices[-1].append(ref)
    return slices


def _header_meta(ds: Any, forbidden: set[str]) -> dict[str, Any]:
    """Identifier-free acquisition metadata from a representative header."""

    def shared(seq: str, attr: str) -> Any:
        return _group_value(ds, None, seq, attr)

    echo = _float(ds.get("EchoTime"))
    if echo is None:
        echo = _float(shared("MREchoSequence", "EffectiveEchoTime"))
    meta = {
        "vendor": vendor_name(ds.get("Manufacturer")),
        "manufacturer": sanitise_text(ds.get("Manufacturer")),
        "model": sanitise_text(ds.get("ManufacturerModelName")),
        "field_strength_t": _float(ds.get("MagneticFieldStrength")),
        "pixel_bandwidth_hz": _float(ds.get("PixelBandwidth")),
        "repetition_time_ms": _float(ds.get("RepetitionTime"))
        or _float(shared("MRTimingAndRelatedParametersSequence", "RepetitionTime")),
        "echo_time_ms": echo,
        "flip_angle_deg": _float(ds.get("FlipAngle"))
        or _float(shared("MRTimingAndRelatedParametersSequence", "FlipAngle")),
        "inversion_time_ms": _float(ds.get("InversionTime")),
        "series_description": sanitise_text(ds.get("SeriesDescription"), forbidden),
        "protocol_name": sanitise_text(ds.get("ProtocolName"), forbidden),
        "scanning_sequence": sanitise_text(_multi(ds.get("ScanningSequence"))),
        "sequence_variant": sanitise_text(_multi(ds.get("SequenceVariant"))),
        "series_number": _int(ds.get("SeriesNumber")),
        "modality": sanitise_text(ds.get("Modality")),
        "slice_thickness_mm": _float(ds.get("SliceThickness"))
        or _float(shared("PixelMeasuresSequence", "SliceThickness")),
        "spacing_between_slices_mm": _float(ds.get("SpacingBetweenSlices"))
        or _float(shared("PixelMeasuresSequence", "SpacingBetweenSlices")),
        "transfer_syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")) or None,
        "philips_scale_slope": _philips_scale_slope(ds),
    }
    return {k: v for k, v in meta.items() if v is not None}


def _multi(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return "\\".join(str(v) for v in value)


def _identifiers(ds: Any) -> set[str]:
    found: set[str] = set()
    name = str(ds.get("PatientName", "") or "")
    found.update(part for part in name.replace("^", " ").split() if len(part) >= 2)
    for attr in ("PatientID", "PatientBirthDate", "OtherPatientIDs"):
        value = ds.get(attr)
        if value:
            found.add(str(value))
    return found


def _build_layout(name: str, refs: list[FrameRef], ds: Any, forbidden: set[str]) -> DicomSeriesLayout:
    """Sorts one geometry-consistent group of images into slices × frames and builds the affine."""
    meta = _header_meta(ds, forbidden)
    first = refs[0]
    spacing_known = all(r.orientation is not None and r.position is not None for r in refs)
    orientation = first.orientation if first.orientation is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    normal = normal / (np.linalg.norm(normal) or 1.0)
    slices = _cluster_slices(refs, normal)
    use_trigger = all(r.trigger_ms is not None for r in refs)
    for group in slices:
        group.sort(key=lambda r: (r.trigger_ms if use_trigger else 0.0, r.instance, r.frame or 0))
    counts = [len(g) for g in slices]
    num_frames = min(counts)
    if len(set(counts)) > 1:
        meta["frames_per_slice"] = counts
        meta["frames_truncated"] = True
        log.warning("series %s: slices have %s frames; keeping the first %d", name, counts, num_frames)
    grid = [g[:num_frames] for g in slices]

    row_spacing, col_spacing = first.pixel_spacing or (1.0, 1.0)
    spacing_known = spacing_known and first.pixel_spacing is not None
    header_gap = meta.get("spacing_between_slices_mm") or meta.get("slice_thickness_mm") or 1.0
    slice_positions = None
    if spacing_known:
        origin = grid[0][0].position
        positions = np.stack([g[0].position for g in grid])  # (Z, 3) LPS
        if len(grid) > 1:
            step = (positions[-1] - positions[0]) / (len(grid) - 1)
            distances = positions @ normal
            gaps = np.diff(distances)
            meta["slice_spacing_mm"] = round(float(np.linalg.norm(step)), 4)
            if np.max(np.abs(gaps - gaps.mean())) > UNEVEN_GAP_TOL_MM:
                meta["uneven_slice_spacing"] = True
                meta["slice_gaps_mm"] = [round(float(g), 3) for g in gaps]
                slice_positions = positions @ RAS_LPS[:3, :3].T  # (Z, 3) RAS
            header = meta.get("spacing_between_slices_mm")
            if header is not None and abs(header - float(gaps.mean())) > SPACING_MISMATCH_TOL_MM:
                meta["slice_spacing_mismatch"] = True
        else:
            step = normal * header_gap
    else:
        origin = np.zeros(3)
        step = normal * header_gap
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i (column index) runs along the row direction
    lps[:3, 1] = col_dir * row_spacing  # j (row index) runs along the column direction
    lps[:3, 2] = step
    lps[:3, 3] = origin
    affine = RAS_LPS @ lps

    frame_times = None
    if use_trigger:
        times = np.array([[r.trigger_ms for r in g] for g in grid], dtype=np.float64)  # (Z, T)
        frame_times = np.median(times, axis=0)
        if num_frames > 1 and np.ptp(frame_times) == 0:
            frame_times = None
    texts = [meta.get("series_description"), meta.get("protocol_name"), sanitise_text(ds.get("SequenceName"))]
    sequence, view = guess_sequence(texts), guess_view(texts)
    meta["sequence_source"] = "description" if sequence is not None else None
    meta["view_source"] = "description" if view is not None else None
    gated = frame_times is not None and float(np.ptp(frame_times)) >= MIN_CINE_SPAN_MS
    gradient_echo = "GR" in (meta.get("scanning_sequence") or "") or "SS" in (
        meta.get("sequence_variant") or ""
    )
    if sequence is None and gated and gradient_echo:
        sequence, meta["sequence_source"] = Sequence.CINE, "header"
    if view is None and sequence == Sequence.CINE and len(grid) >= MIN_SAX_STACK_SLICES:
        view, meta["view_source"] = View.SAX, "geometry"
    meta["num_files"] = len({r.path for g in grid for r in g})
    meta["enhanced_multiframe"] = any(r.frame is not None for g in grid for r in g)
    return DicomSeriesLayout(
        name=name,
        grid=grid,
        affine=affine,
        slice_positions=slice_positions,
        frame_times_ms=frame_times,
        sequence=sequence,
        view=view,
        metadata={k: v for k, v in meta.items() if v is not None},
        spacing_known=spacing_known,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        identifiers=forbidden,
        header=ds,
    )


@_quiet
def scan_dicom_folder(path: str | Path) -> list[DicomSeriesLayout]:
    """Reads every header under ``path`` and lays each series out as slices × frames.

    Args:
        path: A folder (searched recursively) or a single DICOM file.

    Returns:
        One layout per series (per geometry within a series), ordered by series number.

    Raises:
        InputError: When ``path`` holds no readable DICOM image, or a DICOM header is corrupt and
            nothing else is readable.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    groups: dict[str, list[tuple[FrameRef, Any]]] = defaultdict(list)
    tried = corrupt = colour = imageless = 0
    first_error = first_imageless = ""
    for file in iter_files(path):
        tried += 1
        try:
            ds = read_header(file)
        except InputError as err:
            corrupt += 1
            first_error = first_error or f"{file.name}: {err.reason}"
            continue
        if ds is None:
            continue
        if "Rows" not in ds or "Columns" not in ds:
            if has_dicom_preamble(file) and "DirectoryRecordSequence" not in ds:
                imageless += 1  # truncated header, or a non-image object (report, presentation state)
                first_imageless = first_imageless or file.name
            continue
        if (_int(ds.get("SamplesPerPixel")) or 1) != 1:
            colour += 1
            continue
        key = str(ds.get("SeriesInstanceUID", "") or f"number-{ds.get('SeriesNumber', '')}")
        try:
            refs = _frame_refs(file, ds)
        except (AttributeError, ValueError, TypeError, IndexError, KeyError) as err:
            raise InputError(file, f"malformed image geometry ({error_text(err)})") from None
        groups[key].extend((ref, ds) for ref in refs)
    if not groups:
        if tried == 0:
            raise InputError(path, "folder is empty")
        detail = f"; {corrupt} corrupt DICOM file(s), first: {first_error}" if corrupt else ""
        detail += f"; {colour} colour image(s) skipped" if colour else ""
        if imageless:
            detail += f"; {imageless} DICOM file(s) without a readable image header, first: {first_imageless}"
        raise InputError(path, f"no readable DICOM image among {tried} file(s){detail}")
    if corrupt:
        log.warning("%s: skipped %d corrupt DICOM file(s), first: %s", path, corrupt, first_error)
    layouts: list[tuple[tuple, DicomSeriesLayout]] = []
    for key, items in groups.items():
        ds = items[0][1]
        forbidden = _identifiers(ds)
        by_geometry: dict[tuple, list[FrameRef]] = defaultdict(list)
        for ref, _ in items:
            by_geometry[_geometry_key(ref)].append(ref)
        number = _int(ds.get("SeriesNumber"))
        description = sanitise_text(ds.get("SeriesDescription"), forbidden)
        base = "series" if number is None else f"s{number:03d}"
        base = f"{base}_{slug(description, '')}".rstrip("_")
        ordered = sorted(by_geometry.values(), key=lambda refs: (-len(refs), refs[0].instance))
        for part, refs in enumerate(ordered):
            name = base if len(ordered) == 1 else f"{base}_{part + 1}"
            order = (number or 0, key, part)
            layouts.append((order, _build_layout(name, refs, ds, forbidden)))
    layouts.sort(key=lambda item: item[0])
    result = [layout for _, layout in layouts]
    seen: dict[str, int] = defaultdict(int)
    for layout in result:  # unique names
        seen[layout.name] += 1
        if seen[layout.name] > 1:
            layout.name = f"{layout.name}_{seen[layout.name]}"
    return result


def _pixels(path: Path) -> np.ndarray:
    """Decoded stored values of a file: ``(F, rows, columns)``."""
    try:
        ds = _dcmread(path)
    except Exception as err:
        raise InputError(path, f"DICOM file cannot be read ({error_text(err)})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(path, "DICOM file has no pixel data")
    try:
        array = np.asarray(ds.pixel_array)
    except Exception as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = getattr(syntax, "name", str(syntax))
        raise InputError(path, f"pixel data cannot be decoded ({what}; {error_text(err)})") from None
    if array.ndim == 2:
        array = array[None]  # (1, rows, columns)
    return array


@_quiet
def load_layout(layout: DicomSeriesLayout) -> Series:
    """Reads the pixels of a laid-out series into a :class:`Series` (rescale applied).

    Raises:
        InputError: Naming the file whose pixel data is missing, truncated or undecodable.
    """
    columns, rows, num_slices, num_frames = layout.shape
    image = np.empty((columns, rows, num_slices, num_frames), dtype=np.float32)  # (X, Y, Z, T)
    cache: dict[Path, np.ndarray] = {}
    for k, group in enumerate(layout.grid):
        for t, ref in enumerate(group):
            if ref.path not in cache:
                if len(cache) > 0 and ref.frame is None:
                    cache.clear()  # single-frame files are used once
                cache[ref.path] = _pixels(ref.path)
            frames = cache[ref.path]
            index = ref.frame or 0
            if index >= frames.shape[0] or frames.shape[1:] != (ref.rows, ref.columns):
                raise InputError(
                    ref.path, f"pixel data of shape {frames.shape} does not match {ref.rows}×{ref.columns}"
                )
            plane = frames[index].astype(np.float32) * np.float32(ref.slope) + np.float32(ref.intercept)
            image[:, :, k, t] = plane.T  # (rows, columns) -> (X, Y)
    if not np.all(np.isfinite(image)):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise InputError(layout.grid[0][0].path, f"{bad} of {image.size} pixels are NaN or infinite")
    return Series(
        name=layout.name,
        image=image,
        affine=layout.affine,
        sequence=layout.sequence,
        view=layout.view,
        frame_times_ms=layout.frame_times_ms,
        slice_positions=layout.slice_positions,
        spacing_known=layout.spacing_known,
        metadata=dict(layout.metadata),
        source_paths=sorted({str(r.path) for g in layout.grid for r in g}),
    )


def _merge_key(layout: DicomSeriesLayout) -> tuple:
    return (_geometry_key(layout.grid[0][0]), len(layout.grid[0]), layout.sequence)


def merge_single_slice_series(layouts: list[DicomSeriesLayout]) -> list[DicomSeriesLayout]:
    """Joins single-slice multi-frame series of one geometry into stacks.

    Many scanners store a SAX cine as one series per slice. Series with one slice and several
    frames, the same image size, orientation, pixel spacing, image type, frame count and guessed
    sequence, at distinct positions along their common normal, become one stack when there are
    at least :data:`MIN_MERGED_SLICES` of them; ``metadata["merged_series"]`` lists the series
    numbers. Anything else is returned unchanged, in order.
    """
    groups: dict[tuple, list[DicomSeriesLayout]] = defaultdict(list)
    for layout in layouts:
        if len(layout.grid) == 1 and len(layout.grid[0]) > 1 and layout.spacing_known:
            groups[_merge_key(layout)].append(layout)
    replaced: dict[int, DicomSeriesLayout | None] = {}
    for members in groups.values():
        if len(members) < MIN_MERGED_SLICES:
            continue
        orientation = members[0].grid[0][0].orientation
        normal = np.cross(orientation[:3], orientation[3:])
        along = np.sort([float(m.grid[0][0].position @ normal) for m in members])
        if np.min(np.diff(along)) <= SAME_SLICE_TOL_MM:  # repeated positions: retakes, leave alone
            continue
        refs = [ref for m in members for ref in m.grid[0]]
        merged = _build_layout(f"{members[0].name}_stack", refs, members[0].header, members[0].identifiers)
        merged.metadata["merged_series"] = [m.metadata.get("series_number") for m in members]
        replaced[id(members[0])] = merged
        replaced.update({id(m): None for m in members[1:]})
    result = []
    for layout in layouts:
        new = replaced.get(id(layout), layout)
        if new is not None:
            result.append(new)
    return result


def read_dicom_series(path: str | Path, merge_slices: bool = True) -> list[Series]:
    """Reads every series of a DICOM folder (or one file) into :class:`Series` objects.

    Args:
        path: A folder (searched recursively) or one DICOM file.
        merge_slices: Join one-series-per-slice cines into stacks
            (:func:`merge_single_slice_series`).
    """
    layouts = scan_dicom_folder(path)
    if merge_slices:
        layouts = merge_single_slice_series(layouts)
    return [load_layout(layout) for layout in layouts]


def study_key(study_uid: str) -> str:
    """An opaque short key for a StudyInstanceUID (never the UID or a patient identifier)."""
    return "dcm-" + hashlib.sha256(study_uid.encode()).hexdigest()[:10]


def read_dicom_study(
    path: str | Path, study_id: str | None = None, dataset: str = "dicom", merge_slices: bool = True
) -> Study:
    """Reads a DICOM folder as one :class:`Study`.

    Args:
        path: The study folder (or one DICOM file).
        study_id: Key for the study; default: the folder name, or a short hash of the
            StudyInstanceUID when the path is a file or its name contains a patient identifier.
        dataset: Adapter name recorded in the study.
        merge_slices: Join one-series-per-slice cines into stacks
            (:func:`merge_single_slice_series`).
    """
    path = Path(path)
    layouts = scan_dicom_folder(path)
    if merge_slices:
        layouts = merge_single_slice_series(layouts)
    series = [load_layout(layout) for layout in layouts]
    if study_id is None:
        identifiers = set().union(*(layout.identifiers for layout in layouts))
        name = path.name
        leaks = any(word.lower() in name.lower() for word in identifiers if len(word) >= 3)
        study_id = study_key(layouts[0].study_uid) if path.is_file() or leaks or not name else name
    return Study(study_id=study_id, series=series, source=str(path), dataset=dataset)

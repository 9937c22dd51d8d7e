"""Writes small synthetic DICOM series with pydicom, in the styles of the main MR vendors.

Every writer returns what a correct reader must produce: the expected ``(X, Y, Z, T)`` values
(after rescale) with slices sorted along the slice normal and frames by time, and the geometry.
Patient identifiers are fake and planted on purpose so tests can check that none leaks out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

FAKE_PATIENT_NAME = "Doe^Janet"
FAKE_PATIENT_ID = "PID734215"
FAKE_BIRTH_DATE = "19610203"

#: Per-vendor header style: manufacturer, description, rescale, trigger time present, instance order.
VENDOR_STYLES: dict[str, dict] = {
    "siemens": {
        "Manufacturer": "SIEMENS",
        "ManufacturerModelName": "MAGNETOM Aera",
        "SeriesDescription": "cine_trufi_sax Janet",  # an identifier planted in free text
        "ScanningSequence": "GR",
        "SequenceVariant": ["SK", "SS"],
        "field": 1.5,
        "slope": None,
        "trigger": True,
        "descending": False,
        "frame_major": False,
    },
    "ge": {
        "Manufacturer": "GE MEDICAL SYSTEMS",
        "ManufacturerModelName": "SIGNA HDx",
        "SeriesDescription": "FIESTA CINE SAX",
        "ScanningSequence": "GR",
        "SequenceVariant": "SS",
        "field": 1.5,
        "slope": None,
        "trigger": True,
        "descending": True,
        "frame_major": False,
    },
    "philips": {
        "Manufacturer": "Philips Medical Systems",
        "ManufacturerModelName": "Ingenia",
        "SeriesDescription": "sBTFE_CINE SA",
        "ScanningSequence": "GR",
        "SequenceVariant": "SS",
        "field": 3.0,
        "slope": (2.0, -5.0),
        "trigger": True,
        "descending": False,
        "frame_major": True,
    },
    "canon": {
        "Manufacturer": "CANON_MEC",
        "ManufacturerModelName": "Vantage Galan 3T",
        "SeriesDescription": "Cine SAX",
        "ScanningSequence": "GR",
        "SequenceVariant": "SS",
        "field": 3.0,
        "slope": None,
        "trigger": False,
        "descending": True,
        "frame_major": True,
    },
}


@dataclass
class Written:
    """What was written and what a reader must return."""

    values: np.ndarray  # (X, Y, Z, T) expected intensities, slices ascending along the normal
    positions_lps: np.ndarray  # (Z, 3) IPP of each slice, ascending along the normal
    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    trigger_ms: np.ndarray | None  # (T,)
    files: list[Path] = field(default_factory=list)

    def world_lps(self, i: float, j: float, k: int) -> np.ndarray:
        """DICOM position of voxel (i = column, j = row) of slice k."""
        return (
            self.positions_lps[k]
            + i * self.pixel_spacing[1] * self.row_dir
            + j * self.pixel_spacing[0] * self.col_dir
        )


def oblique_directions(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random orthonormal (row, column) direction pair, far from the scanner axes."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q[:, 0], q[:, 1]


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _base(
    style: dict, study_uid: str, series_uid: str, series_number: int, description: str | None
) -> Dataset:
    ds = Dataset()
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.PatientBirthDate = FAKE_BIRTH_DATE
    ds.Modality = "MR"
    ds.Manufacturer = style["Manufacturer"]
    ds.ManufacturerModelName = style["ManufacturerModelName"]
    ds.MagneticFieldStrength = style["field"]
    ds.SeriesDescription = style["SeriesDescription"] if description is None else description
    ds.ProtocolName = ds.SeriesDescription
    ds.ScanningSequence = style["ScanningSequence"]
    ds.SequenceVariant = style["SequenceVariant"]
    ds.RepetitionTime = 3.1
    ds.EchoTime = 1.4
    ds.FlipAngle = 50
    ds.PixelBandwidth = 930
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def _raw_plane(rows: int, cols: int, k: int, t: int) -> np.ndarray:
    """Stored values ``(rows, cols)``: unique per slice/frame, asymmetric to expose transposes."""
    j, i = np.mgrid[0:rows, 0:cols]
    return (1000 + 200 * k + 20 * t + i + 3 * j).astype(np.uint16)


def write_cine(
    folder: Path,
    vendor: str = "siemens",
    n_slices: int = 3,
    n_frames: int = 4,
    rows: int = 16,
    cols: int = 12,
    seed: int = 0,
    slice_gap_mm: float = 8.0,
    pixel_spacing: tuple[float, float] = (1.25, 1.5),
    gaps_mm: list[float] | None = None,
    compress: str | None = None,
    series_number: int = 5,
    description: str | None = None,
    study_uid: str | None = None,
    spacing_between_slices: float | None = None,
    names: str = "shuffled",
    series_uid: str | None = None,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M"),
    first_offset_mm: float = 0.0,
) -> Written:
    """Writes a cine stack as one file per image, file names shuffled.

    Args:
        folder: Output folder (created).
        vendor: One of :data:`VENDOR_STYLES`.
        n_slices: Slices.
        n_frames: Frames per slice.
        rows: Image rows (Y).
        cols: Image columns (X).
        seed: Seeds the orientation and the file order.
        slice_gap_mm: Distance between slice centres.
        pixel_spacing: ``(row spacing, column spacing)``.
        gaps_mm: Explicit uneven gaps (``n_slices - 1`` values) instead of ``slice_gap_mm``.
        compress: A transfer syntax UID to compress with (e.g. RLE Lossless).
        series_number: SeriesNumber.
        description: SeriesDescription (default: the vendor's).
        study_uid: StudyInstanceUID (default: new).
        spacing_between_slices: Header SpacingBetweenSlices (default: ``slice_gap_mm``).
        names: ``"shuffled"`` (random ``IMnnnnn`` names) or ``"instance"`` (``<InstanceNumber>.dcm``).
        series_uid: SeriesInstanceUID (default: new).
        image_type: ImageType values.
        first_offset_mm: Position of the first slice along the normal (to write one slice per series).
    """
    style = VENDOR_STYLES[vendor]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row_dir, col_dir = oblique_directions(seed)
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-40.0, 25.0, 60.0])
    gaps = np.asarray(gaps_mm if gaps_mm is not None else [slice_gap_mm] * (n_slices - 1), dtype=float)
    offsets = first_offset_mm + np.concatenate([[0.0], np.cumsum(gaps)])
    positions = origin[None, :] + offsets[:, None] * normal[None, :]  # (Z, 3) ascending
    slope, intercept = style["slope"] or (1.0, 0.0)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    acquisition = list(range(n_slices))[::-1] if style["descending"] else list(range(n_slices))
    values = np.zeros((cols, rows, n_slices, n_frames), dtype=np.float32)
    triggers = np.arange(n_frames) * 45.0 + 12.0
    jobs = []
    for a, k in enumerate(acquisition):
        for t in range(n_frames):
            instance = t * n_slices + a + 1 if style["frame_major"] else a * n_frames + t + 1
            jobs.append((k, t, instance))
    shuffled = [f"IM{n:05d}" for n in rng.permutation(len(jobs))]
    written = []
    for (k, t, instance), name in zip(jobs, shuffled, strict=True):
        sop_uid = generate_uid()
        ds = _base(style, study_uid, series_uid, series_number, description)
        ds.file_meta = _meta(MRImageStorage, sop_uid)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = instance
        ds.ImageType = list(image_type)
        ds.ImagePositionPatient = [round(float(v), 6) for v in positions[k]]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_gap_mm
        ds.SpacingBetweenSlices = slice_gap_mm if spacing_between_slices is None else spacing_between_slices
        ds.Rows, ds.Columns = rows, cols
        if style["trigger"]:
            ds.TriggerTime = float(triggers[t] + 0.5 * k)  # small per-slice jitter, as in real data
        if style["slope"]:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
            private = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
            private.add_new(0x0E, "FL", 0.37)
        raw = _raw_plane(rows, cols, k, t)
        ds.PixelData = raw.tobytes()
        if compress is not None:
            ds.compress(compress)
        path = folder / (f"{instance}.dcm" if names == "instance" else name)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
        values[:, :, k, t] = raw.T.astype(np.float32) * slope + intercept
    return Written(
        values=values,
        positions_lps=positions,
        row_dir=row_dir,
        col_dir=col_dir,
        pixel_spacing=pixel_spacing,
        trigger_ms=triggers if style["trigger"] else None,
        files=written,
    )


def write_localiser(
    folder: Path, series_number: int = 1, study_uid: str | None = None, size: int = 24
) -> None:
    """A three-plane localiser: one series, three images of different orientation."""
    folder.mkdir(parents=True, exist_ok=True)
    style = VENDOR_STYLES["siemens"]
    series_uid = generate_uid()
    study_uid = study_uid or generate_uid()
    planes = [
        ([1, 0, 0, 0, 1, 0], [0, 0, 0]),
        ([1, 0, 0, 0, 0, -1], [0, 0, 0]),
        ([0, 1, 0, 0, 0, -1], [0, 0, 0]),
    ]
    for n, (iop, ipp) in enumerate(planes):
        sop_uid = generate_uid()
        ds = _base(style, study_uid, series_uid, series_number, "localizer")
        ds.file_meta = _meta(MRImageStorage, sop_uid)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = ipp
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [2.0, 2.0]
        ds.SliceThickness = 6.0
        ds.Rows = ds.Columns = size
        ds.PixelData = _raw_plane(size, size, n, 0).tobytes()
        ds.save_as(folder / f"loc{n}.dcm", enforce_file_format=True)


def write_enhanced(
    path: Path,
    n_slices: int = 3,
    n_frames: int = 4,
    rows: int = 16,
    cols: int = 12,
    seed: int = 3,
    slice_gap_mm: float = 7.0,
    slope: tuple[float, float] = (0.5, 10.0),
) -> Written:
    """One enhanced MR multi-frame file with per-frame position/trigger, frames in shuffled order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row_dir, col_dir = oblique_directions(seed)
    normal = np.cross(row_dir, col_dir)
    positions = np.array([10.0, -20.0, 35.0])[None, :] + np.arange(n_slices)[:, None] * slice_gap_mm * normal
    triggers = np.arange(n_frames) * 50.0
    sop_uid = generate_uid()
    ds = _base(VENDOR_STYLES["philips"], generate_uid(), generate_uid(), 7, "cine 4ch enhanced")
    ds.file_meta = _meta(EnhancedMRImageStorage, sop_uid)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, cols
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [1.1, 1.3]
    measures.SliceThickness = slice_gap_mm
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = slope
    transform.RescaleType = "US"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    order = [(k, t) for k in range(n_slices) for t in range(n_frames)]
    order = [order[n] for n in rng.permutation(len(order))]
    per_frame, planes = [], []
    values = np.zeros((cols, rows, n_slices, n_frames), dtype=np.float32)
    for k, t in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [float(v) for v in positions[k]]
        item.PlanePositionSequence = DicomSequence([position])
        sync = Dataset()
        sync.NominalCardiacTriggerDelayTime = float(triggers[t])
        item.CardiacSynchronizationSequence = DicomSequence([sync])
        content = Dataset()
        content.TemporalPositionIndex = t + 1
        content.InStackPositionNumber = k + 1
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
        raw = _raw_plane(rows, cols, k, t)
        planes.append(raw)
        values[:, :, k, t] = raw.T * slope[0] + slope[1]
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(order)
    ds.PixelData = np.stack(planes).tobytes()  # (F, rows, cols)
    ds.save_as(path, enforce_file_format=True)
    return Written(values, positions, row_dir, col_dir, (1.1, 1.3), triggers, [path])

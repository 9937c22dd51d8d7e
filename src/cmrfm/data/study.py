"""The study record: one type for every CMR source, geometry kept.

Array layout everywhere is ``(X, Y, Z, T)``: X = column index (i), Y = row index (j), Z = slice,
T = frame, exactly NIfTI's voxel order. ``affine`` maps a voxel index ``(i, j, k, 1)`` to world
coordinates in millimetres in **RAS+** (the NIfTI/nibabel convention). DICOM readers convert
from DICOM's LPS patient coordinates by negating x and y; :func:`ras_to_lps` goes back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmrfm.constants import LABEL_NAMES, Group, Sequence, View
from cmrfm.errors import InputError

#: Flips x and y: RAS <-> LPS (its own inverse).
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Converts a RAS+ voxel-to-world affine into DICOM's LPS convention (and back)."""
    return RAS_LPS @ affine


@dataclass
class ClinicalInfo:
    """Optional per-subject clinical metadata (never identifiers).

    Attributes:
        group: Disease group when known (ACDC/simulator).
        height_cm: Body height in cm.
        weight_kg: Body weight in kg.
        ed_frame: End-diastolic frame index into the cine series (0-based).
        es_frame: End-systolic frame index (0-based).
        infarct: Whether an infarct is present (EMIDEC N/P), when known.
        extra: Anything else a source provides (e.g. simulator ground truth).
    """

    group: Group | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    ed_frame: int | None = None
    es_frame: int | None = None
    infarct: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Series:
    """One image series (a SAX cine stack, an LGE stack, a long-axis cine, ...).

    Attributes:
        name: Short, identifier-free name (e.g. ``"sax_cine"``, ``"patient001_frame01"``).
        image: Float32 array ``(X, Y, Z, T)``.
        affine: 4×4 voxel-to-world affine in RAS+ mm.
        sequence: Sequence when known, else ``None``.
        view: View when known, else ``None``.
        frame_times_ms: Trigger time of each frame, shape ``(T,)``, when known.
        slice_positions: World (RAS) position of each slice's first voxel, ``(Z, 3)``; defaults to
            what the affine implies. DICOM stacks with uneven gaps keep their true positions here.
        labels: Frame index → ``(X, Y, Z)`` uint8 mask in the internal convention
            (:class:`cmrfm.constants.Label`).
        label_names: Label id → name for the labels this series may contain.
        spacing_known: False when the source carries no geometry (e.g. PNG slices).
        metadata: Acquisition metadata without identifiers (vendor, field strength, ...).
        source_paths: Files this series was read from.
    """

    name: str
    image: np.ndarray
    affine: np.ndarray
    sequence: Sequence | None = None
    view: View | None = None
    frame_times_ms: np.ndarray | None = None
    slice_positions: np.ndarray | None = None
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=lambda: dict(LABEL_NAMES))
    spacing_known: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    source_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        where = self.source_paths[0] if self.source_paths else self.name
        image = np.asarray(self.image)
        if image.ndim == 2:
            image = image[:, :, None, None]
        elif image.ndim == 3:
            image = image[..., None]
        if image.ndim != 4:
            raise InputError(where, f"expected a 2D, 3D or 4D image, got {image.ndim} dimensions")
        if min(image.shape) == 0:
            raise InputError(where, f"image has an empty dimension {image.shape}")
        if image.shape[0] < 2 or image.shape[1] < 2:
            raise InputError(where, f"image of in-plane size {image.shape[:2]} is too small to be CMR")
        self.image = image.astype(np.float32, copy=False)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise InputError(where, "affine must be a finite 4×4 matrix")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise InputError(where, "affine is singular (zero voxel size or degenerate orientation)")
        for frame, mask in list(self.labels.items()):
            mask = np.asarray(mask)
            if mask.ndim == 2:
                mask = mask[:, :, None]
            if mask.shape != self.image.shape[:3]:
                raise InputError(
                    where, f"label of frame {frame} has shape {mask.shape}, image has {self.image.shape[:3]}"
                )
            if not 0 <= frame < self.image.shape[3]:
                raise InputError(where, f"label frame {frame} outside 0..{self.image.shape[3] - 1}")
            self.labels[frame] = mask.astype(np.uint8, copy=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(X, Y, Z, T)``."""
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along X, Y, Z (Z = distance between slice centres)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def num_slices(self) -> int:
        """Number of slices (Z)."""
        return self.image.shape[2]

    @property
    def num_frames(self) -> int:
        """Number of frames (T)."""
        return self.image.shape[3]

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit vector along increasing slice index, in world (RAS) coordinates."""
        column = self.affine[:3, 2]
        return column / np.linalg.norm(column)

    def positions(self) -> np.ndarray:
        """World position of each slice's first voxel, ``(Z, 3)``."""
        if self.slice_positions is not None:
            return np.asarray(self.slice_positions, dtype=np.float64)
        k = np.arange(self.num_slices)
        return self.affine[:3, 3][None, :] + k[:, None] * self.affine[:3, 2][None, :]

    def labels_present(self) -> list[str]:
        """Names of the non-background labels present in any labelled frame."""
        ids: set[int] = set()
        for mask in self.labels.values():
            ids.update(int(v) for v in np.unique(mask))
        ids.discard(0)
        return [self.label_names.get(i, str(i)) for i in sorted(ids)]

    def frame(self, t: int) -> Series:
        """A single-frame copy ``(X, Y, Z, 1)`` with that frame's label, if any."""
        labels = {0: self.labels[t]} if t in self.labels else {}
        times = None if self.frame_times_ms is None else self.frame_times_ms[t : t + 1]
        return dataclasses.replace(
            self, image=self.image[..., t : t + 1], labels=labels, frame_times_ms=times
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description (used by ``cmrfm data inspect``)."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "spacing_mm": [round(s, 4) for s in self.spacing] if self.spacing_known else None,
            "slices": self.num_slices,
            "frames": self.num_frames,
            "sequence": None if self.sequence is None else str(self.sequence),
            "view": None if self.view is None else str(self.view),
            "labels_present": self.labels_present(),
            "labelled_frames": sorted(self.labels),
            "vendor": self.metadata.get("vendor"),
            "field_strength_t": self.metadata.get("field_strength_t"),
            "intensity_range": [float(np.min(self.image)), float(np.max(self.image))],
        }


@dataclass
class Study:
    """All series of one subject/examination, plus optional clinical metadata.

    Attributes:
        study_id: Identifier-free key (folder name, simulator id, or a hash of the DICOM UID).
        series: The series, in reading order.
        clinical: Optional clinical metadata and ground truth.
        source: Where the study was read from.
        dataset: Name of the adapter that produced it (``"acdc"``, ``"dicom"``, ...).
    """

    study_id: str
    series: list[Series]
    clinical: ClinicalInfo = field(default_factory=ClinicalInfo)
    source: str = ""
    dataset: str = ""

    def __post_init__(self) -> None:
        if not self.series:
            raise InputError(self.source or self.study_id, "no image series found")

    def find(self, sequence: Sequence | None = None, view: View | None = None) -> list[Series]:
        """Series matching the given sequence and/or view."""
        return [
            s
            for s in self.series
            if (sequence is None or s.sequence == sequence) and (view is None or s.view == view)
        ]

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description of the study and each series."""
        clinical = {
            k: (str(v) if isinstance(v, Group) else v)
            for k, v in dataclasses.asdict(self.clinical).items()
            if v not in (None, {}) and k != "extra"
        }
        return {
            "study": self.study_id,
            "dataset": self.dataset,
            "source": self.source,
            "clinical": clinical,
            "series": [s.summary() for s in self.series],
        }

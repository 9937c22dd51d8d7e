"""Study analysis: one CMR study in, a clinical assessment (numbers, masks, pictures) out.

:func:`analyze_study` runs, for one :class:`~cmrfm.data.study.Study` read *without labels*:

1. Series identification: sequence and view from the classifiers when their weights exist, else
   the reader's guess (DICOM header / sidecar keywords), else an assumption for image-only NIfTI
   (stacks of ≥ :data:`MIN_SAX_SLICES` slices are taken as cine SAX); quality grade per series.
   After segmentation (step 2-4) has found each series' heart, the series is read again on crops
   centred there when its first crops lay off it (:func:`reidentify_on_heart`); a reading that
   changes the segmentation task makes the study be segmented again.
2. Cine SAX: the crop re-centred on the heart a first segmentation finds (training crops are
   centred on the labelled heart); every slice of every frame segmented in batched forwards on
   one preprocessing plan per series; post-processing (:mod:`cmrfm.clinical.postprocess`); masks
   mapped back to the series' own grid; ED/ES from the LV volume curve (LV+RV for an ED/ES pair);
   Simpson volumes with the true slice spacing; mass at ED; BSA-indexed values; flags against
   normal ranges; RV insertion points and septal direction; disease classification from images
   plus features of the predicted masks.
   Single-frame SAX volumes of one geometry (an ACDC patient's ED and ES files) form one
   pseudo-cine; a frame file identical to a frame of a 4D cine reuses that frame's masks.
3. LGE SAX: LV/MYO/infarct/MVO, infarct present/absent, infarct size (% of LV myocardium), MVO.
4. Long-axis cine and T1/T2 maps: segmented when their task weights exist.
5. Uncertainty per structure (variance of class probabilities across decoder levels, plus the
   variance over flips with test-time augmentation) and an out-of-distribution flag.

A missing model skips its step with a warning in ``measurements["warnings"]``; no number is ever
made up. Outputs go to one study folder (see :func:`write_outputs`).

Out-of-distribution rule (documented heuristic, thresholds overridable per model card entry
``ood``): the study is flagged when the mean normalised predictive entropy over the predicted heart
region exceeds :data:`DEFAULT_ENTROPY_MAX`, when no LV is found at all, or when the in-plane pixel
size lies outside :data:`PLAUSIBLE_PIXEL_MM` or the slice spacing outside
:data:`PLAUSIBLE_SLICE_MM`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cmrfm import __version__
from cmrfm.clinical.bundle import ModelBundle, SegPrediction
from cmrfm.clinical.dicom_seg import write_dicom_seg
from cmrfm.clinical.features import FEATURE_NAMES, disease_features
from cmrfm.clinical.function import (
    body_surface_area_m2,
    detect_ed_es,
    slice_spacing_mm,
    ventricular_function,
    volume_curve_ml,
)
from cmrfm.clinical.geometry import insertion_points_distance, rv_insertion_points, septal_direction
from cmrfm.clinical.normal_ranges import flag_measurements, load_ranges
from cmrfm.clinical.postprocess import clean_stack
from cmrfm.clinical.report import write_report
from cmrfm.constants import FUNCTION_KEYS, LABEL_NAMES, ML_PER_MM3, Label, Sequence, View
from cmrfm.data.adapters import ADAPTERS
from cmrfm.data.preprocess import (
    PreparedSeries,
    PreprocessConfig,
    PreprocessRecord,
    heart_centre_of_masks,
    invert_mask,
    invert_probs,
    preprocess_series,
    recentre,
)
from cmrfm.data.study import ClinicalInfo, Series, Study
from cmrfm.errors import InputError
from cmrfm.io.loader import detect_adapter
from cmrfm.io.nifti import is_label_file, is_nifti, list_nifti_images, nifti_stem, read_nifti
from cmrfm.io.writers import save_mask
from cmrfm.metrics import mean_heart_entropy

#: Stacks with at least this many slices and no known view are taken as short axis.
MIN_SAX_SLICES = 3
#: Default OOD threshold on mean normalised entropy over the predicted heart region.
DEFAULT_ENTROPY_MAX = 0.35
#: Plausible in-plane pixel size (mm) and slice spacing (mm) of clinical CMR.
PLAUSIBLE_PIXEL_MM = (0.3, 4.0)
PLAUSIBLE_SLICE_MM = (2.0, 20.0)
#: Infarct volume (mL) above which segmentation alone calls an infarct present, unless the
#: ``lge-seg`` card carries its own calibrated ``infarct_present_min_ml``.
MIN_INFARCT_ML = 1.0
#: Slices used to classify a series (middle ones of frame 0).
CLASSIFY_SLICES = 3
#: Frames whose middle slices grade image quality.
QUALITY_FRAMES = 3
#: A classifier overrides the reader's header/sidecar hint only from this confidence on.
OVERRIDE_CONFIDENCE = 0.8
#: Without a reader hint, a classifier is believed only from this confidence on (else assumed).
MIN_CONFIDENCE = 0.5
#: A series is classified again, on crops centred on the heart its segmentation found, when that
#: heart lies at least this far (mm) from the centre of a classifier's first crop: the image
#: classifiers lose accuracy off-centre (0.98 -> 0.76 for sequence-cls at 36 mm; RESULTS.md,
#: "Image classifiers on off-centre crops").
RECLASSIFY_SHIFT_MM = 6.0
#: Quality class names (lower case) taken as below diagnostic quality.
NON_DIAGNOSTIC_GRADES = frozenset(
    {"non-diagnostic", "nondiagnostic", "poor", "3", "grade3", "grade_3", "severe"}
)
#: Segmentation task per (sequence, view); LAX views share one task.
SEG_TASKS: dict[tuple[Sequence, str], str] = {
    (Sequence.CINE, "sax"): "sax-seg",
    (Sequence.CINE, "lax"): "lax-seg",
    (Sequence.LGE, "sax"): "lge-seg",
    (Sequence.T1_MAP, "sax"): "mapping-seg",
    (Sequence.T2_MAP, "sax"): "mapping-seg",
}
LAX_VIEWS = (View.TWO_CH, View.THREE_CH, View.FOUR_CH)


#: Two-frame studies whose LV+RV volumes differ by less than this fraction get an ED/ES warning.
AMBIGUOUS_ED_ES_FRACTION = 0.03


@dataclass
class AnalyzeOptions:
    """User settings of an analysis.

    Attributes:
        height_cm: Body height for BSA indexing.
        weight_kg: Body weight for BSA indexing.
        sex: ``male``/``female`` for sex-specific normal ranges (pooled when unknown).
        keep_identifiers: Keep source paths and DICOM patient attributes in outputs.
        ranges: A site's normal-range YAML (default table when None).
        report: Write ``report.html`` and figures.
    """

    height_cm: float | None = None
    weight_kg: float | None = None
    sex: str | None = None
    keep_identifiers: bool = False
    ranges: str | None = None
    report: bool = True


# ----------------------------------------------------------------------------- loading


def _accepts_with_labels(adapter: Any) -> bool:
    try:
        return "with_labels" in inspect.signature(adapter.load_study).parameters
    except (TypeError, ValueError):
        return False


def _load_nifti_images_only(path: Path) -> Study:
    """A NIfTI file or folder read without its label files or clinical sidecar."""
    if path.is_file():
        return Study(nifti_stem(path), [read_nifti(path)], source=str(path), dataset="nifti")
    images = list_nifti_images(path)
    if not images:
        raise InputError(path, "no NIfTI image in this folder")
    series = [read_nifti(p) for p in images]
    names = [s.name for s in series]
    for s, p in zip(series, images, strict=True):
        if names.count(s.name) > 1:
            s.name = nifti_stem(p)
    return Study(path.name, series, source=str(path), dataset="nifti")


def study_paths(path: str | Path) -> list[Path]:
    """The study paths under an input: itself when it is one study, else each study of a root.

    Raises:
        InputError: When ``path`` is neither a study nor a root of studies.
    """
    path = Path(path)
    adapter, single = detect_adapter(path)
    return [path] if single else list(adapter.list_studies(path))


def load_for_analysis(path: str | Path) -> Study:
    """Loads one study for analysis: images only (no labels, no clinical ground truth).

    A folder holding NIfTI images (plain, ACDC, M&Ms) is read image by image: label files
    (``*_gt``, ``_seg``) and clinical files (``Info.cfg``, CSV) are never opened. Other sources
    (DICOM) are read by their adapter without labels where it can skip them, labels dropped
    otherwise; clinical ground truth is always dropped. An analysis sees exactly what a new
    patient's study would give it.
    """
    path = Path(path)
    adapter, single = detect_adapter(path)
    if not single:
        raise InputError(path, f"holds several {adapter.name} studies; give one of them")
    if adapter is ADAPTERS.get("nifti") or (path.is_dir() and list_nifti_images(path)):
        # NIfTI folders (ACDC, M&Ms, plain) are read image by image: no Info.cfg, CSV or _gt.
        study = _load_nifti_images_only(path)
    elif _accepts_with_labels(adapter):
        study = adapter.load_study(path, with_labels=False)
    else:
        study = adapter.load_study(path)
    for series in study.series:
        series.labels = {}
    study.clinical = ClinicalInfo()
    return study


# ----------------------------------------------------------------------------- small helpers


def _finite(value: Any, digits: int = 1) -> float | None:
    """A JSON-safe rounded float (None for NaN/inf/None)."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def _class_label_ids(classes: tuple[str, ...]) -> np.ndarray:
    """Lookup from a model's class index to the internal label id (by name; unknown -> 0)."""
    by_name = {name.lower(): int(i) for i, name in LABEL_NAMES.items()}
    return np.array([by_name.get(c.lower(), 0) for c in classes], np.uint8)


def _view_family(view: View | None) -> str | None:
    if view == View.SAX:
        return "sax"
    if view in LAX_VIEWS:
        return "lax"
    return None


def _mid_slices(num: int, count: int) -> list[int]:
    centre = num // 2
    half = count // 2
    return sorted({min(num - 1, max(0, centre + d)) for d in range(-half, count - half)})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return _finite(value, 4)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _sanitise(value: Any) -> Any:
    """Recursively replaces NaN/inf by None so the JSON is strict."""
    if isinstance(value, dict):
        return {str(k): _sanitise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitise(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    return value


# ----------------------------------------------------------------------------- state


@dataclass
class SeriesInfo:
    """What an analysis decided about one series."""

    series: Series
    sequence: Sequence | None
    view: View | None
    source: str
    sequence_confidence: float | None = None
    view_confidence: float | None = None
    quality: dict[str, Any] | None = None
    alias: tuple[str, int] | None = None  # (cine series name, frame) when a duplicate of a cine frame
    crop: str = "first guess"  # where the classifiers' crop was centred ("first guess", "segmented heart")
    read_at: dict[str, tuple[float, float]] = field(default_factory=dict)  # task -> crop centre (x, y)

    def summary(self) -> dict[str, Any]:
        """The ``series`` entry of measurements.json."""
        confidences = [c for c in (self.sequence_confidence, self.view_confidence) if c is not None]
        return {
            "name": self.series.name,
            "sequence": None if self.sequence is None else str(self.sequence),
            "view": None if self.view is None else str(self.view),
            "confidence": _finite(min(confidences), 3) if confidences else None,
            "sequence_confidence": _finite(self.sequence_confidence, 3),
            "view_confidence": _finite(self.view_confidence, 3),
            "source": self.source,
            "classified_on": self.crop,
            "shape": list(self.series.shape),
            "quality": self.quality,
        }


@dataclass
class SegRun:
    """One series segmented frame by frame.

    Attributes:
        series: The (possibly combined) series that was segmented.
        task_id: The segmentation task used.
        prepared: Its preprocessing (images on the model grid per frame).
        grid_labels: ``(H, W, Z, T)`` cleaned internal labels on the model grid.
        labels: ``(X, Y, Z, T)`` internal labels on the series' own grid.
        uncertainty: ``(T, Z, C, H, W)`` per-class uncertainty (level variance [+ TTA variance]).
        entropy: ``(T, Z, H, W)`` normalised predictive entropy of the plain (un-flipped) pass.
        label_ids: Internal label id of each model class.
        parts: For a pseudo-cine: the input series of each frame.
        heart_centre: Source ``(x, y)`` of the heart the re-centring segmentation found (None when
            it found none or was not run).
    """

    series: Series
    task_id: str
    prepared: PreparedSeries
    grid_labels: np.ndarray
    labels: np.ndarray
    uncertainty: np.ndarray
    entropy: np.ndarray
    label_ids: np.ndarray
    parts: list[Series] = field(default_factory=list)
    heart_centre: tuple[float, float] | None = None

    def grid_images(self, t: int) -> np.ndarray:
        """``(Z, H, W)`` model-grid images of frame ``t``."""
        return self.prepared.images[t]

    def structure_uncertainty(self, frames: list[int]) -> dict[str, float]:
        """Mean uncertainty of each structure's class inside its (dilated) predicted region."""
        out = {}
        for c, label in enumerate(self.label_ids):
            if label == 0:
                continue
            values = []
            for t in frames:
                region = self.grid_labels[..., t] == label  # (H, W, Z)
                region = ndimage.binary_dilation(region, iterations=1)
                if region.any():
                    values.append(self.uncertainty[t, :, c].transpose(1, 2, 0)[region].mean())
            if values:
                out[LABEL_NAMES.get(int(label), str(label))] = round(float(np.mean(values)), 5)
        return out

    def mean_entropy(self, frames: list[int]) -> float | None:
        """Mean entropy over the dilated predicted heart of ``frames`` (None when nothing is found)."""
        # entropy (Z, H, W) -> (H, W, Z) like the labels
        values = [
            mean_heart_entropy(self.entropy[t].transpose(1, 2, 0), self.grid_labels[..., t]) for t in frames
        ]
        found = [v for v in values if v is not None]
        return float(np.mean(found)) if found else None


class PreparedCache:
    """Preprocessing planned once per (series, grid settings); frames made on first use; shared."""

    def __init__(self) -> None:
        self._items: dict[tuple, PreparedSeries] = {}
        self._configs: dict[tuple, PreprocessConfig] = {}

    @staticmethod
    def _key(series: Series, config: PreprocessConfig) -> tuple:
        return (id(series), config.size, config.spacing_mm, tuple(config.percentiles), config.clip)

    def recentre(
        self, series: Series, config: PreprocessConfig, centre: tuple[float, float], source: str
    ) -> PreparedSeries:
        """Moves the series' crop for ``config`` to ``centre`` (source x, y); frames are remade."""
        key = self._key(series, config)
        old = self.get(series, config, frames=[0])
        record = recentre(old.record, centre, source)
        frames = sorted(old.images)
        self._items[key] = preprocess_series(series, self._configs[key], frames=frames, record=record)
        return self._items[key]

    def get(
        self, series: Series, config: PreprocessConfig, frames: list[int] | None = None
    ) -> PreparedSeries:
        """The series preprocessed for ``config``; holds at least ``frames`` (default: every frame)."""
        key = self._key(series, config)
        wanted = list(range(series.num_frames)) if frames is None else list(frames)
        if key not in self._items:
            self._items[key] = preprocess_series(series, config, frames=wanted)
            self._configs[key] = config
            return self._items[key]
        prepared = self._items[key]
        missing = [t for t in wanted if t not in prepared.images]
        if missing:
            more = preprocess_series(series, self._configs[key], frames=missing, record=prepared.record)
            prepared.images.update(more.images)
        return prepared


# ----------------------------------------------------------------------------- identification


def _quality_entry(bundle: ModelBundle, prepared: PreparedSeries) -> dict[str, Any]:
    loaded = bundle.models["quality-cls"]
    frames = sorted(prepared.images)[:QUALITY_FRAMES]
    stack = np.concatenate(
        [prepared.images[t][_mid_slices(len(prepared.images[t]), CLASSIFY_SLICES)] for t in frames]
    )  # (N, H, W)
    probs = bundle.classify("quality-cls", stack).mean(axis=0)
    grade = loaded.classes[int(np.argmax(probs))]
    bad = {str(c).lower() for c in loaded.card.get("non_diagnostic_classes", [])} or NON_DIAGNOSTIC_GRADES
    return {
        "grade": grade,
        "diagnostic": str(grade).lower() not in bad,
        "probabilities": {str(c): round(float(p), 4) for c, p in zip(loaded.classes, probs, strict=True)},
        "source": "quality-cls",
    }


def _classify_enum(bundle: ModelBundle, task_id: str, images: np.ndarray, enum: type) -> tuple[Any, float]:
    loaded = bundle.models[task_id]
    probs = bundle.classify(task_id, images).mean(axis=0)
    index = int(np.argmax(probs))
    name = str(loaded.classes[index]).lower()
    try:
        value = enum(name)
    except ValueError:
        value = enum("other")
    return value, float(probs[index])


def identify_series(
    series: Series, bundle: ModelBundle, cache: PreparedCache, warnings: list[str]
) -> SeriesInfo:
    """Sequence, view (with confidence and source) and quality of one series."""
    info = SeriesInfo(series, series.sequence, series.view, source="reader")
    sources = []
    for task_id, attr, enum in (("sequence-cls", "sequence", Sequence), ("view-cls", "view", View)):
        if not bundle.has(task_id):
            continue
        prepared = cache.get(series, bundle.models[task_id].preprocess, frames=[0])
        info.read_at[task_id] = prepared.record.centre
        images = prepared.images[0][_mid_slices(series.num_slices, CLASSIFY_SLICES)]
        value, confidence = _classify_enum(bundle, task_id, images, enum)
        hint = getattr(info, attr)
        needed = OVERRIDE_CONFIDENCE if hint is not None else MIN_CONFIDENCE
        if value == hint or confidence >= needed:
            if hint is not None and value != hint:
                warnings.append(f"series {series.name}: {attr} {value} by the classifier, header said {hint}")
            setattr(info, attr, value)
            setattr(info, f"{attr}_confidence", confidence)
            sources.append(f"{attr}:model")
        elif hint is not None:
            warnings.append(
                f"series {series.name}: classifier says {attr} {value} ({confidence:.2f}), "
                f"kept the header's {hint}"
            )
    if sources:
        info.source = "model" if len(sources) == 2 else f"{sources[0]}+reader"
    if info.sequence is None or info.view is None:
        assumed = []
        if info.sequence is None:
            info.sequence = Sequence.CINE
            assumed.append("sequence cine")
        if info.view is None:
            info.view = View.SAX if series.num_slices >= MIN_SAX_SLICES else View.OTHER
            assumed.append(f"view {info.view}")
        info.source = "assumed" if not sources else info.source + "+assumed"
        warnings.append(
            f"series {series.name}: no confident classifier and no header hint; "
            f"assumed {' and '.join(assumed)}"
        )
    if bundle.has("quality-cls"):
        frames = list(range(min(QUALITY_FRAMES, series.num_frames)))
        prepared = cache.get(series, bundle.models["quality-cls"].preprocess, frames)
        info.read_at["quality-cls"] = prepared.record.centre
        info.quality = _quality_entry(bundle, prepared)
        if not info.quality["diagnostic"]:
            warnings.append(
                f"series {series.name}: image quality graded {info.quality['grade']} (below diagnostic)"
            )
    return info


def _offset_mm(a: tuple[float, float], b: tuple[float, float], spacing: tuple[float, float]) -> float:
    """Distance (mm) between two source points ``(x, y)`` with in-plane ``spacing``."""
    return math.hypot((a[0] - b[0]) * spacing[0], (a[1] - b[1]) * spacing[1])


def reidentify_on_heart(
    info: SeriesInfo,
    centre: tuple[float, float],
    bundle: ModelBundle,
    cache: PreparedCache,
    warnings: list[str],
) -> SeriesInfo | None:
    """Sequence, view and quality read again on crops centred on the heart a segmentation found.

    The first reading (:func:`identify_series`) crops around a heuristic centre, which can sit
    20-40 mm off the heart (a single frame has no motion to find it by); the classifiers were
    trained on crops centred on the labelled heart and lose accuracy off-centre. When any crop of
    the first reading (``info.read_at``) lay :data:`RECLASSIFY_SHIFT_MM` or more from the segmented
    heart, the classifier crops still that far from it are moved there (a crop the segmentation's
    re-centring already moved, shared by an identical preprocessing plan, stays where it is) and
    the series is read again.

    Args:
        info: The first reading of the series.
        centre: Source ``(x, y)`` of its segmented heart (from this series or one on its grid).
        bundle: Loaded models.
        cache: The study's preprocessing cache (classifier crops are moved in place).
        warnings: Receives the new reading's warnings.

    Returns:
        The new reading (``crop == "segmented heart"``), or None when every crop of the first
        reading was already within that distance (the first reading stands).
    """
    series = info.series
    records = {t: cache.get(series, bundle.models[t].preprocess, frames=[0]).record for t in info.read_at}
    if all(
        _offset_mm(read, centre, records[t].in_spacing) < RECLASSIFY_SHIFT_MM
        for t, read in info.read_at.items()
    ):
        return None
    for task_id, record in records.items():
        if _offset_mm(record.centre, centre, record.in_spacing) >= RECLASSIFY_SHIFT_MM:
            cache.recentre(series, bundle.models[task_id].preprocess, centre, "segmentation")
    again = identify_series(series, bundle, cache, warnings)
    again.crop = "segmented heart"
    return again


# ----------------------------------------------------------------------------- segmentation


def _same_grid(a: Series, b: Series) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-3)


def group_sax_frames(infos: list[SeriesInfo]) -> tuple[list[tuple[Series, list[Series]]], list[SeriesInfo]]:
    """Cine SAX series to segment: 4D cines as they are, single frames of one grid stacked.

    Returns:
        ``[(series to segment, input series per frame or [])]`` and the infos of single frames that
        duplicate a frame of a 4D cine (their ``alias`` set; they are not segmented again).
    """
    sax = [i for i in infos if i.sequence == Sequence.CINE and i.view == View.SAX]
    cines = [i.series for i in sax if i.series.num_frames > 1]
    singles = [i for i in sax if i.series.num_frames == 1]
    aliased, rest = [], []
    for info in singles:
        match = None
        for cine in cines:
            if _same_grid(cine, info.series):
                hits = [
                    t
                    for t in range(cine.num_frames)
                    if np.array_equal(cine.image[..., t], info.series.image[..., 0])
                ]
                if hits:
                    match = (cine.name, hits[0])
                    break
        if match:
            info.alias = match
            aliased.append(info)
        else:
            rest.append(info)
    groups: list[list[Series]] = []
    for info in rest:
        for group in groups:
            if _same_grid(group[0], info.series):
                group.append(info.series)
                break
        else:
            groups.append([info.series])
    out: list[tuple[Series, list[Series]]] = [(c, []) for c in cines]
    for group in groups:
        if len(group) == 1:
            out.append((group[0], []))
            continue
        first = group[0]
        combined = dataclasses.replace(
            first,
            name="+".join(s.name for s in group),
            image=np.concatenate([s.image for s in group], axis=-1),  # (X, Y, Z, T)
            frame_times_ms=None,
            labels={},
            source_paths=[p for s in group for p in s.source_paths],
        )
        out.append((combined, group))
    return out, aliased


def centre_on_prediction(
    series: Series, task_id: str, bundle: ModelBundle, cache: PreparedCache, passes: int = 2
) -> tuple[float, float] | None:
    """Re-centres the series' crop on the heart a first segmentation of frame 0 finds.

    Training crops are centred on the manual labels' heart centroid (LV, MYO, RV, scar); an image-only
    study is first cropped around a heuristic centre, which for a large RV or an off-centre heart can
    sit 20-30 mm from where training put it and cut the RV off. Each pass segments frame 0 on the
    current crop, takes the centroid of the predicted heart with the same definition as training
    (:func:`~cmrfm.data.preprocess.heart_centre_of_masks`) and moves the crop there; passes stop once
    the move is below one output pixel. Returns the final centre, or None when nothing was found.

    Args:
        series: The series to segment.
        task_id: Its segmentation task.
        bundle: Loaded models.
        cache: The study's preprocessing cache (updated in place, so later steps share the crop).
        passes: Maximum number of re-centring passes.
    """
    loaded = bundle.models[task_id]
    label_ids = _class_label_ids(loaded.classes)
    centre = None
    for _ in range(passes):
        prepared = cache.get(series, loaded.preprocess, frames=[0])
        # with the bundle's views: on ACDC patient047 the jittered pass put the crop 8 mm from the
        # training centre, a single pass 12 mm (its basal RV sits on a token-grid decision edge)
        pred = bundle.segment(task_id, prepared.images[0])  # (Z, H, W) in, labels (Z, H, W)
        grid = clean_stack(label_ids[pred.labels].transpose(1, 2, 0))  # (H, W, Z)
        found = heart_centre_of_masks([invert_mask(grid.transpose(2, 0, 1), prepared.record)])
        if found is None:
            return centre
        record = prepared.record
        shift_px = math.hypot(
            (found[0] - record.centre[0]) / record.step[0], (found[1] - record.centre[1]) / record.step[1]
        )
        centre = found
        if shift_px < 1.0:
            break
        cache.recentre(series, loaded.preprocess, found, "segmentation")
    return centre


def source_labels(probs: np.ndarray, label_ids: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """One frame's model-grid probabilities ``(Z, C, H, W)`` -> cleaned series-grid labels ``(X, Y, Z)``.

    The probabilities are interpolated linearly onto the series' pixels before the arg-max, so a
    boundary falls where the classes cross between model pixels instead of on the model grid's
    pixel edges; outside the crop every class scores 0 and the arg-max is the background class.
    Post-processing runs again on the series' grid. On ACDC fold 0 (20 held-out patients, 0.7-1.9
    mm pixels) this raised the analysis Dice from 0.901 to 0.905 over mapping the model-grid labels
    back (every structure gained; benchmarks/RESULTS.md).
    """
    back = invert_probs(probs.transpose(1, 0, 2, 3), record)  # (C, X, Y, Z)
    return clean_stack(label_ids[back.argmax(axis=0)])


def segment_series(
    series: Series,
    task_id: str,
    bundle: ModelBundle,
    cache: PreparedCache,
    parts: list[Series] | None = None,
    recentre_passes: int = 2,
) -> SegRun:
    """Segments every slice of every frame of a series in batched forwards; cleans; maps back.

    The crop is first re-centred on the predicted heart (:func:`centre_on_prediction`, at most
    ``recentre_passes`` passes on frame 0; 0 keeps the heuristic crop).
    """
    loaded = bundle.models[task_id]
    centre = (
        centre_on_prediction(series, task_id, bundle, cache, recentre_passes) if recentre_passes else None
    )
    prepared = cache.get(series, loaded.preprocess)
    frames = sorted(prepared.images)
    stack = np.stack([prepared.images[t] for t in frames])  # (T, Z, H, W)
    t_n, z_n, h, w = stack.shape
    frame_of_slice = np.repeat(np.arange(t_n), z_n)  # (T*Z,) each frame is one volume
    pred: SegPrediction = bundle.segment(task_id, stack.reshape(t_n * z_n, h, w), groups=frame_of_slice)
    label_ids = _class_label_ids(loaded.classes)
    raw = label_ids[pred.labels].reshape(t_n, z_n, h, w)  # (T, Z, H, W) internal ids
    grid = np.stack([clean_stack(raw[t].transpose(1, 2, 0)) for t in range(t_n)], axis=-1)  # (H, W, Z, T)
    # the series-grid labels come from the probabilities (sub-pixel boundaries), not from `grid`
    probs = pred.probs.reshape(t_n, z_n, -1, h, w)  # (T, Z, C, H, W)
    labels = np.stack(
        [source_labels(probs[t], label_ids, prepared.record) for t in range(t_n)], axis=-1
    )  # (X, Y, Z, T)
    uncertainty = pred.level_variance
    if pred.tta_variance is not None:
        uncertainty = uncertainty + pred.tta_variance
    c = uncertainty.shape[1]
    return SegRun(
        series=series,
        task_id=task_id,
        prepared=prepared,
        grid_labels=grid,
        labels=labels,
        uncertainty=uncertainty.reshape(t_n, z_n, c, h, w).astype(np.float16),
        entropy=pred.ood_entropy().reshape(t_n, z_n, h, w).astype(np.float16),
        label_ids=label_ids,
        parts=list(parts or []),
        heart_centre=centre,
    )


@dataclass
class StudySegmentation:
    """The segmentation runs of one study's series (see :func:`segment_study`).

    Attributes:
        runs: Run per segmented series name (a pseudo-cine under its combined name).
        cine_run: The cine SAX run used for function (most frames, then most slices).
        lge_runs: The LGE runs.
        lge_series: Every series read as LGE (segmented or not).
        aliased: Single frames that duplicate a frame of a 4D cine (not segmented again).
    """

    runs: dict[str, SegRun]
    cine_run: SegRun | None
    lge_runs: list[SegRun]
    lge_series: list[Series]
    aliased: list[SeriesInfo]

    def heart_centre(self, info: SeriesInfo) -> tuple[float, float] | None:
        """Source ``(x, y)`` of the heart segmented in ``info``'s series, or on its grid."""
        run = self.runs.get(info.series.name)
        if run is None:
            run = next((r for r in self.runs.values() if any(p is info.series for p in r.parts)), None)
        if run is None and info.alias is not None:
            run = self.runs.get(info.alias[0])
        return None if run is None else run.heart_centre


def seg_task_for(info: SeriesInfo) -> str | None:
    """The segmentation task a reading calls for (None for series no task segments)."""
    family = _view_family(info.view)
    return SEG_TASKS.get((info.sequence, family)) if info.sequence and family else None


def segment_study(
    infos: list[SeriesInfo], bundle: ModelBundle, cache: PreparedCache, warnings: list[str]
) -> StudySegmentation:
    """Segments every series with the task its reading calls for (cine SAX grouped into cines)."""
    for info in infos:
        info.alias = None  # set again by the grouping below (a second pass must not keep stale ones)
    runs: dict[str, SegRun] = {}
    # Cine SAX: 4D cines and pseudo-cines of single frames.
    sax_groups, aliased = group_sax_frames(infos)
    cine_run: SegRun | None = None
    if sax_groups and not bundle.has("sax-seg"):
        warnings.append("no sax-seg weights: cine SAX segmentation, volumes, EF, mass skipped")
    if bundle.has("sax-seg"):
        for series, parts in sax_groups:
            runs[series.name] = segment_series(series, "sax-seg", bundle, cache, parts)
        if runs:
            cine_run = max(runs.values(), key=lambda r: (r.series.num_frames, r.series.num_slices))
    if not sax_groups:
        warnings.append("no cine SAX series found: no volumes or EF")
    # Other segmentations: LAX cine, LGE, maps.
    lge_runs: list[SegRun] = []
    lge_series: list[Series] = []
    for info in infos:
        if info.sequence == Sequence.CINE and _view_family(info.view) == "sax":
            continue
        if info.sequence == Sequence.LGE:
            lge_series.append(info.series)
        task_id = seg_task_for(info)
        if task_id is None:
            continue
        if not bundle.has(task_id):
            warnings.append(f"no {task_id} weights: {info.series.name} not segmented")
            continue
        run = segment_series(info.series, task_id, bundle, cache)
        runs[info.series.name] = run
        if info.sequence == Sequence.LGE:
            lge_runs.append(run)
    return StudySegmentation(runs, cine_run, lge_runs, lge_series, aliased)


# ----------------------------------------------------------------------------- measurements


def _pixel_area(series: Series) -> float:
    sx, sy, _ = series.spacing
    return sx * sy


def _slice_mm(series: Series) -> float:
    return slice_spacing_mm(series.positions(), series.spacing[2])


def cine_function(run: SegRun, options: AnalyzeOptions, warnings: list[str]) -> dict[str, Any]:
    """ED/ES, volumes, EF, mass (indexed when possible) and flags from a segmented SAX cine."""
    series = run.series
    area, dz = _pixel_area(series), _slice_mm(series)
    lv_curve = volume_curve_ml(run.labels, Label.LV, area, dz)
    rv_curve = volume_curve_ml(run.labels, Label.RV, area, dz)
    out: dict[str, Any] = dict.fromkeys(FUNCTION_KEYS)
    out.update(
        {
            "ed_frame": None,
            "es_frame": None,
            "slice_spacing_mm": round(dz, 3),
            "pixel_spacing_mm": [round(v, 4) for v in series.spacing[:2]],
            "lv_volume_curve_ml": [round(float(v), 2) for v in lv_curve],
            "rv_volume_curve_ml": [round(float(v), 2) for v in rv_curve],
        }
    )
    if not series.spacing_known:
        warnings.append(f"series {series.name} has no geometry: volumes use assumed 1 mm pixels")
    if lv_curve.max() <= 0:
        warnings.append(f"no LV found in {series.name}: no volumes or EF")
        return out
    if series.num_frames == 1:
        warnings.append("a single SAX frame: taken as end-diastole; ES measures unavailable")
        ed = es = 0
    elif series.num_frames == 2:
        ed, es = detect_ed_es(lv_curve, rv_curve)  # ordered by LV+RV volume
        total = lv_curve + rv_curve
        if abs(total[0] - total[1]) < AMBIGUOUS_ED_ES_FRACTION * total.max():
            warnings.append(
                f"ED and ES of {series.name} differ by < {AMBIGUOUS_ED_ES_FRACTION:.0%} in "
                "ventricular volume: which frame is ED is uncertain"
            )
    else:
        ed, es = detect_ed_es(lv_curve)
        if ed == es:
            warnings.append("LV volume is constant over frames: ED/ES undetermined")
    out["ed_frame"], out["es_frame"] = int(ed), int(es)
    source_frames = series.metadata.get("source_frames")
    if isinstance(source_frames, list) and len(source_frames) == series.num_frames and not run.parts:
        out["ed_frame_source"] = source_frames[ed]
        out["es_frame_source"] = source_frames[es]
    if run.parts:
        out["ed_input"] = run.parts[ed].name
        out["es_input"] = run.parts[es].name
    function = ventricular_function(run.labels[..., ed], run.labels[..., es], area, dz)
    values = function.as_dict()
    if ed == es:
        for key in FUNCTION_KEYS:
            if key not in ("lv_edv_ml", "rv_edv_ml", "lv_mass_g"):
                values[key] = None
    out.update({k: _finite(v) for k, v in values.items()})
    for side in ("lv", "rv"):
        ef = out.get(f"{side}_ef_pct")
        if ef is not None and ef < 0:
            warnings.append(
                f"{side.upper()} end-systolic volume exceeds end-diastolic volume (EF {ef:.0f} %): the "
                f"{side.upper()} segmentation failed in one of the two frames; do not use its EF"
            )
    if options.height_cm and options.weight_kg:
        bsa = body_surface_area_m2(options.height_cm, options.weight_kg)
        out["bsa_m2"] = round(bsa, 3)
        for key, value in function.indexed(bsa).items():
            base = key[: -len("_m2")]
            out[key] = _finite(value) if values.get(base) is not None else None
    flags_input = {k: v for k, v in out.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    table = load_ranges(options.ranges)
    out["flags"] = flag_measurements(flags_input, options.sex, table)
    out["ranges_sex"] = (options.sex or "unknown").lower()
    return out


def _mid_ventricular_slice(mask: np.ndarray) -> int | None:
    """Middle slice (Z index) among those with LV, MYO and RV present in an ``(X, Y, Z)`` mask."""
    ok = [
        z
        for z in range(mask.shape[2])
        if all((mask[..., z] == label).any() for label in (Label.LV, Label.MYO, Label.RV))
    ]
    return ok[len(ok) // 2] if ok else None


def landmarks_and_orientation(run: SegRun, ed: int, bundle: ModelBundle) -> dict[str, Any]:
    """RV insertion points at the mid-ventricular ED slice and the septal direction.

    The points are read off the segmentation where it shows a clear RV-LV junction: on ACDC fold 0
    they lie 4.0 mm from the manual labels' against 5.2 mm for the ``landmarks`` heatmap head
    (benchmarks/RESULTS.md). With a ``landmarks`` model, its points are reported beside them with
    the distance between the two (a consistency check), and used where the mask shows no junction.
    """
    series = run.series
    mask = run.labels[..., ed]
    z = _mid_ventricular_slice(mask)
    if z is None:
        return {"available": False, "reason": "no slice with LV, MYO and RV at ED"}
    plane = mask[..., z].T  # (Y, X) = (rows, columns)
    points = rv_insertion_points(plane)
    source = "segmentation"
    model_points = _landmark_model_points(run, ed, z, bundle)
    if points is None and model_points is not None:
        points, source = model_points, "landmarks"
    if points is None:
        return {"available": False, "reason": "no clear RV-LV junction at the mid-ventricular ED slice"}
    direction = septal_direction(plane)
    world = [
        (series.affine @ np.array([float(x), float(y), float(z), 1.0]))[:3].round(2).tolist()
        for x, y in points
    ]
    out: dict[str, Any] = {
        "available": True,
        "source": source,
        "frame": int(ed),
        "slice": int(z),
        "rv_insertion_points_px": np.round(points, 2).tolist(),
        "rv_insertion_points_mm": world,
    }
    if model_points is not None and source == "segmentation":
        distance = insertion_points_distance(model_points, points, series.spacing[:2])  # (x, y) mm/px
        out["landmarks_model_points_px"] = np.round(model_points, 2).tolist()
        out["landmarks_model_distance_mm"] = round(distance, 2)
    if direction is not None:
        vec = series.affine[:3, :2] @ direction.astype(float)
        out["septal_direction_px"] = np.round(direction, 4).tolist()
        out["septal_direction_world"] = np.round(vec / np.linalg.norm(vec), 4).tolist()
    return out


def _landmark_model_points(run: SegRun, ed: int, z: int, bundle: ModelBundle) -> np.ndarray | None:
    """The ``landmarks`` model's two RV insertion points ``(2, 2)`` in source pixels, when it can run."""
    if not bundle.has("landmarks"):
        return None
    record = run.prepared.record
    if bundle.models["landmarks"].preprocess.size != record.out_size:
        return None
    coords = bundle.landmarks("landmarks", run.prepared.images[ed][z : z + 1])[0, :2]  # (2, 2) grid px
    xs = record.origin[0] + coords[:, 0] * record.step[0]
    ys = record.origin[1] + coords[:, 1] * record.step[1]
    return np.stack([xs, ys], axis=1).astype(np.float32)


def shape_features(run: SegRun, ed: int, es: int) -> np.ndarray:
    """The disease classifier's shape/function features of the predicted ED/ES masks (model grid)."""
    pixel_mm, slice_mm = run.prepared.record.out_spacing, _slice_mm(run.series)
    return disease_features(run.grid_labels[..., ed], run.grid_labels[..., es], pixel_mm, slice_mm)


def classify_disease(
    run: SegRun, ed: int, es: int, bundle: ModelBundle, cache: PreparedCache, warnings: list[str]
) -> dict[str, Any]:
    """Disease group probabilities from ED+ES images and features of the predicted masks."""
    if not bundle.has("disease-cls"):
        warnings.append("no disease-cls weights: disease classification skipped")
        return {"label": None, "probabilities": {}, "reason": "no disease-cls weights"}
    loaded = bundle.models["disease-cls"]
    prepared = cache.get(run.series, loaded.preprocess, frames=[ed, es])
    images = np.concatenate([prepared.images[ed], prepared.images[es]])  # (2Z, H, W)
    probs, _ = bundle.classify_study("disease-cls", images, shape_features(run, ed, es))
    return {
        "label": str(loaded.classes[int(np.argmax(probs))]),
        "probabilities": {str(c): round(float(p), 4) for c, p in zip(loaded.classes, probs, strict=True)},
        "features_from": "predicted masks",
        "source": "disease-cls",
    }


def lge_voxel_counts(mask: np.ndarray) -> tuple[int, int, int]:
    """Voxels of LV myocardium (normal + infarct + MVO), of scar (infarct + MVO) and of MVO."""
    myocardium = int(np.isin(mask, (Label.MYO, Label.INFARCT, Label.MVO)).sum())
    scar = int(np.isin(mask, (Label.INFARCT, Label.MVO)).sum())
    return myocardium, scar, int((mask == Label.MVO).sum())


def lge_assessment(
    run: SegRun | None, series: Series, bundle: ModelBundle, cache: PreparedCache
) -> dict[str, Any]:
    """Infarct presence, size (% of LV myocardium) and MVO of one LGE series."""
    out: dict[str, Any] = {"series": series.name}
    if run is not None:
        voxel_ml = _pixel_area(series) * _slice_mm(series) * ML_PER_MM3
        myo, scar, mvo = lge_voxel_counts(run.labels[..., 0])
        out.update(
            {
                "myocardium_ml": round(myo * voxel_ml, 2),
                "infarct_ml": round(scar * voxel_ml, 2),
                "infarct_pct_of_lv_myocardium": round(100.0 * scar / myo, 2) if myo else None,
                "mvo_ml": round(mvo * voxel_ml, 2),
                "mvo_present": bool(mvo * voxel_ml > 0),
            }
        )
    if bundle.has("lge-infarct"):
        loaded = bundle.models["lge-infarct"]
        prepared = cache.get(series, loaded.preprocess, frames=[0])
        probs, _ = bundle.classify_study("lge-infarct", prepared.images[0])
        present = str(loaded.classes[int(np.argmax(probs))]).lower() == "present"
        out["infarct_present"] = present
        out["infarct_probability"] = round(float(probs[list(loaded.classes).index("present")]), 4)
        out["infarct_present_source"] = "lge-infarct"
    elif run is not None:
        card = bundle.models["lge-seg"].card if bundle.has("lge-seg") else {}
        min_ml = float(card.get("infarct_present_min_ml", MIN_INFARCT_ML))
        out["infarct_present"] = bool(out["infarct_ml"] >= min_ml)
        out["infarct_present_source"] = f"segmentation (infarct ≥ {min_ml:g} mL)"
    return out


def ood_assessment(
    runs: list[tuple[SegRun, list[int]]], series: list[Series], bundle: ModelBundle
) -> dict[str, Any]:
    """Out-of-distribution flag from predictive entropy, empty segmentations and implausible geometry.

    Each segmented series is compared with the threshold of the model that segmented it (its card's
    ``ood.entropy_max``, else :data:`DEFAULT_ENTROPY_MAX`).
    """
    reasons: list[str] = []
    per_series = []
    for run, frames in runs:
        card_ood = bundle.models[run.task_id].card.get("ood") or {}
        if "entropy_max" in card_ood:
            threshold, source = float(card_ood["entropy_max"]), "model card"
        else:
            threshold, source = DEFAULT_ENTROPY_MAX, "default"
        value = run.mean_entropy(frames)
        if value is None:
            reasons.append(f"nothing segmented in {run.series.name}")
            continue
        per_series.append(
            {
                "series": run.series.name,
                "task": run.task_id,
                "mean_entropy": _finite(value, 4),
                "threshold": threshold,
                "threshold_source": source,
            }
        )
        if value > threshold:
            reasons.append(
                f"{run.series.name}: mean predictive entropy {value:.3f} "
                f"above {threshold:.3f} ({run.task_id})"
            )
    values = [e["mean_entropy"] for e in per_series if e["mean_entropy"] is not None]
    mean_entropy = float(np.mean(values)) if values else None
    first = per_series[0] if per_series else {"threshold": DEFAULT_ENTROPY_MAX, "threshold_source": "default"}
    for s in series:
        if not s.spacing_known:
            continue
        sx, sy, _ = s.spacing
        if not (PLAUSIBLE_PIXEL_MM[0] <= min(sx, sy) and max(sx, sy) <= PLAUSIBLE_PIXEL_MM[1]):
            reasons.append(f"{s.name}: pixel size {sx:.2f}×{sy:.2f} mm outside {PLAUSIBLE_PIXEL_MM}")
        if s.num_slices > 1 and s.view == View.SAX:
            dz = _slice_mm(s)
            if not PLAUSIBLE_SLICE_MM[0] <= dz <= PLAUSIBLE_SLICE_MM[1]:
                reasons.append(f"{s.name}: slice spacing {dz:.1f} mm outside {PLAUSIBLE_SLICE_MM}")
    return {
        "flag": bool(reasons),
        "reasons": reasons,
        "mean_entropy": _finite(mean_entropy, 4),
        "entropy_threshold": first["threshold"],
        "threshold_source": first["threshold_source"],
        "per_series": per_series,
        "assessed": bool(runs),
    }


# ----------------------------------------------------------------------------- orchestration


@dataclass
class StudyAnalysis:
    """Everything an analysis produced (measurements plus the arrays the outputs need)."""

    study: Study
    measurements: dict[str, Any]
    infos: list[SeriesInfo]
    runs: dict[str, SegRun]
    cine: SegRun | None = None
    lge: list[SegRun] = field(default_factory=list)


def analyze(study: Study, bundle: ModelBundle, options: AnalyzeOptions | None = None) -> StudyAnalysis:
    """Runs the whole analysis of one study in memory (no files written)."""
    options = options or AnalyzeOptions()
    started = time.perf_counter()
    warnings: list[str] = []
    for task_id, reason in bundle.errors.items():
        warnings.append(f"weights for {task_id} unusable: {reason}")
    untrained = sorted(t for t, loaded in bundle.models.items() if not loaded.trained)
    if untrained:
        warnings.append(
            f"untrained (random) weights for {', '.join(untrained)}: their outputs are meaningless"
        )
    cache = PreparedCache()
    readings: list[list[str]] = [[] for _ in study.series]  # each series' identification warnings
    infos = [identify_series(s, bundle, cache, w) for s, w in zip(study.series, readings, strict=True)]
    seg_warnings: list[str] = []
    seg = segment_study(infos, bundle, cache, seg_warnings)
    # read each series again on its segmented heart; segment again if that changes a series' task
    redo = False
    for index, info in enumerate(infos):
        centre = seg.heart_centre(info)
        again: list[str] = []
        new = None if centre is None else reidentify_on_heart(info, centre, bundle, cache, again)
        if new is None:
            continue
        if (new.sequence, new.view) != (info.sequence, info.view):
            again.append(
                f"series {info.series.name}: read as {new.sequence} {new.view} on a crop centred on its "
                f"segmented heart (first read as {info.sequence} {info.view} on the first-guess crop)"
            )
        redo = redo or seg_task_for(new) != seg_task_for(info)
        infos[index], readings[index] = new, again
    if redo:
        seg_warnings = []
        seg = segment_study(infos, bundle, cache, seg_warnings)
    warnings += [w for reading in readings for w in reading] + seg_warnings
    runs, cine_run, lge_runs = seg.runs, seg.cine_run, seg.lge_runs
    m: dict[str, Any] = {"study": study.study_id, "cmrfm_version": __version__}
    if options.keep_identifiers:
        m["source"] = study.source
    m.update(dict.fromkeys(FUNCTION_KEYS))
    m.update({"ed_frame": None, "es_frame": None})
    ood_runs: list[tuple[SegRun, list[int]]] = []
    if cine_run is not None:
        m["cine_series"] = cine_run.series.name
        m.update(cine_function(cine_run, options, warnings))
        ed, es = m["ed_frame"], m["es_frame"]
        if ed is not None:
            frames = sorted({ed, es})
            m["landmarks"] = landmarks_and_orientation(cine_run, ed, bundle)
            if ed != es:
                features = shape_features(cine_run, ed, es)
                m["shape_features"] = {
                    name: round(float(v), 5) for name, v in zip(FEATURE_NAMES, features, strict=True)
                }
                m["diagnosis"] = classify_disease(cine_run, ed, es, bundle, cache, warnings)
            m["uncertainty"] = {"cine": cine_run.structure_uncertainty(frames)}
            ood_runs.append((cine_run, frames))
    m.setdefault("diagnosis", {"label": None, "probabilities": {}, "reason": "no ED/ES segmentation"})
    if seg.lge_series:
        lge_list = []
        for series in seg.lge_series:
            run = next((r for r in lge_runs if r.series is series), None)
            lge_list.append(lge_assessment(run, series, bundle, cache))
            if run is not None:
                m.setdefault("uncertainty", {})[f"lge:{series.name}"] = run.structure_uncertainty([0])
                ood_runs.append((run, [0]))
        m["lge"] = lge_list[0] if len(lge_list) == 1 else lge_list
    for run in runs.values():
        if run.task_id in ("lax-seg", "mapping-seg"):
            m.setdefault("segmented_series", []).append({"series": run.series.name, "task": run.task_id})
            if run.task_id == "mapping-seg":
                myo = run.labels[..., 0] == Label.MYO
                if myo.any():
                    m.setdefault("mapping", {})[run.series.name] = {
                        "myocardium_mean": round(float(run.series.image[..., 0][myo].mean()), 1),
                        "unit": "ms",
                    }
    m["series"] = [i.summary() for i in infos]
    graded = [i.quality for i in infos if i.quality]
    if graded:
        m["quality"] = {
            "assessed": True,
            "diagnostic": all(q["diagnostic"] for q in graded),
            "per_series": {i.series.name: i.quality for i in infos if i.quality},
        }
    else:
        m["quality"] = {"assessed": False, "reason": "no quality-cls weights"}
        warnings.append("no quality-cls weights: image quality not graded")
    m["ood"] = ood_assessment(ood_runs, [i.series for i in infos], bundle)
    if m["ood"]["flag"]:
        warnings.append("input flagged out-of-distribution: " + "; ".join(m["ood"]["reasons"]))
    m["aliases"] = {
        i.series.name: {"series": i.alias[0], "frame": i.alias[1]} for i in seg.aliased if i.alias
    }
    m["model"] = {
        "weights_folder": str(bundle.folder) if options.keep_identifiers else bundle.folder.name,
        "tasks": bundle.versions(),
        "tta": bundle.tta,
        "jitter": bundle.jitter,
    }
    m["warnings"] = list(dict.fromkeys(warnings))
    m["timing_s"] = {"analysis": round(time.perf_counter() - started, 3)}
    return StudyAnalysis(study, _sanitise(m), infos, runs, cine_run, lge_runs)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Strict JSON (no NaN), indented."""
    path.write_text(json.dumps(_sanitise(data), indent=2, default=_json_default, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- outputs

#: Label map written beside every segmentation file.
SEG_LABEL_NAMES = {int(k): v for k, v in LABEL_NAMES.items()}
_FRAME_FILE_RE = re.compile(r"_frame(\d+)$")


def unique_folder(root: Path, name: str) -> Path:
    """``root/name``, or ``root/name-2``, ``-3``... when it exists: an output is never overwritten."""
    candidate = root / name
    n = 2
    while candidate.exists():
        candidate = root / f"{name}-{n}"
        n += 1
    return candidate


def _nifti_sources(series: Series) -> list[Path]:
    return [Path(p) for p in series.source_paths if is_nifti(Path(p)) and not is_label_file(Path(p))]


def _nifti_targets(series: Series) -> list[tuple[Path, int | None]]:
    """Input NIfTI files of a series and the frame each holds (None: the whole series)."""
    import nibabel as nib

    paths = _nifti_sources(series)
    if not paths:
        return []
    first_shape = nib.load(str(paths[0])).shape
    targets: list[tuple[Path, int | None]] = []
    rest = paths
    if (len(first_shape) >= 4 and first_shape[3] == series.num_frames) or series.num_frames == 1:
        targets.append((paths[0], None))
        rest = paths[1:]
        frames = series.metadata.get("source_frames")
        for path in rest:  # ACDC frame files beside the 4D cine
            match = _FRAME_FILE_RE.search(nifti_stem(path))
            if match and isinstance(frames, list) and int(match[1]) in frames:
                targets.append((path, frames.index(int(match[1]))))
        return targets
    if len(paths) == series.num_frames:  # one file per frame (ACDC ED/ES without a 4D cine)
        return [(p, t) for t, p in enumerate(paths)]
    return []


def _write_masks_nifti(run: SegRun, seg_dir: Path, written: list[str]) -> None:
    pieces: list[tuple[Series, Path, np.ndarray]] = []
    if run.parts:
        for t, part in enumerate(run.parts):
            for path, _ in _nifti_targets(part):
                pieces.append((part, path, run.labels[..., t]))
    else:
        for path, frame in _nifti_targets(run.series):
            if frame is None:
                like = run.series
                mask = run.labels[..., 0] if run.series.num_frames == 1 else run.labels
            else:
                like = run.series.frame(frame)
                mask = run.labels[..., frame]
            pieces.append((like, path, mask))
    for like, path, mask in pieces:
        out = seg_dir / f"{nifti_stem(path)}_seg.nii.gz"
        save_mask(mask, like, out, label_names=SEG_LABEL_NAMES)
        written.append(str(out.relative_to(seg_dir.parent)))


def write_outputs(analysis: StudyAnalysis, folder: Path, options: AnalyzeOptions) -> list[str]:
    """Writes masks (NIfTI in each input's geometry, DICOM SEG for DICOM input), JSON and report."""
    folder.mkdir(parents=True, exist_ok=False)
    seg_dir = folder / "seg"
    seg_dir.mkdir()
    written: list[str] = []
    m = analysis.measurements
    warnings = m["warnings"]
    for run in analysis.runs.values():
        if _nifti_sources(run.series) or any(_nifti_sources(p) for p in run.parts):
            _write_masks_nifti(run, seg_dir, written)
        elif run.series.source_paths and analysis.study.source:
            frames = [0]
            if run is analysis.cine and m.get("ed_frame") is not None:
                frames = sorted({m["ed_frame"], m["es_frame"]})
            try:
                path = write_dicom_seg(
                    run.series,
                    run.labels,
                    frames,
                    analysis.study.source,
                    seg_dir / f"{run.series.name}_seg.dcm",
                    analysis.study.study_id,
                    options.keep_identifiers,
                )
                written.append(str(path.relative_to(folder)))
            except InputError as err:
                warnings.append(f"DICOM SEG of {run.series.name} not written: {err.reason}")
            except (ValueError, TypeError, AttributeError, KeyError) as err:  # highdicom refusals
                warnings.append(f"DICOM SEG of {run.series.name} not written: {type(err).__name__}: {err}")
    for info in analysis.infos:  # frame files identical to a frame of a 4D cine
        if info.alias and info.alias[0] in analysis.runs:
            run = analysis.runs[info.alias[0]]
            for path, _ in _nifti_targets(info.series):
                out = seg_dir / f"{nifti_stem(path)}_seg.nii.gz"
                save_mask(run.labels[..., info.alias[1]], info.series, out, label_names=SEG_LABEL_NAMES)
                written.append(str(out.relative_to(folder)))
    m["outputs"] = sorted(set(written))
    if options.report:
        started = time.perf_counter()
        write_report(analysis, folder)
        m["timing_s"]["report"] = round(time.perf_counter() - started, 3)
        m["outputs"] += ["report.html"]
    write_json(folder / "measurements.json", m)
    return m["outputs"]


def analyze_path(
    path: str | Path, bundle: ModelBundle, out_root: str | Path, options: AnalyzeOptions | None = None
) -> tuple[Path, dict[str, Any]]:
    """Loads one study (images only), analyses it and writes ``out_root/<study>/``.

    Returns:
        The study output folder and its measurements.
    """
    options = options or AnalyzeOptions()
    started = time.perf_counter()
    study = load_for_analysis(path)
    loaded = time.perf_counter()
    analysis = analyze(study, bundle, options)
    folder = unique_folder(Path(out_root), study.study_id)
    if folder.name != study.study_id:
        analysis.measurements["warnings"].append(
            f"output folder {study.study_id} existed; wrote to {folder.name} instead"
        )
    analysis.measurements["timing_s"]["load"] = round(loaded - started, 3)
    write_outputs(analysis, folder, options)
    return folder, analysis.measurements


__all__ = [
    "AnalyzeOptions",
    "SegRun",
    "SeriesInfo",
    "StudyAnalysis",
    "analyze",
    "analyze_path",
    "group_sax_frames",
    "identify_series",
    "load_for_analysis",
    "segment_series",
    "study_paths",
    "unique_folder",
    "write_json",
    "write_outputs",
]

"""Simulated cohorts for tasks without (enough) real labels: simulated once, preprocessed, cached.

A cohort is ``subjects`` simulated studies (every sequence and view of :mod:`cmrfm.simulate`),
subject ``i`` drawn with :func:`cmrfm.simulate.cohort.subject_seed` ``(seed, i)`` and disease groups
cycling for balance, exactly as ``cmrfm simulate`` writes cohorts. Each series goes through the
same invertible learning-time preprocessing as real data (:func:`cmrfm.data.preprocess.preprocess_series`),
so simulated and real items share grid, spacing and intensity normalisation. Cine series keep the
ED, ES and a mid-diastolic frame; LGE and maps their single frame.

Per-subject arrays are cached as ``.npz`` under ``$CMRFM_CACHE/simulated/<hash>/`` (the hash covers
every setting and the simulator's source code), written atomically, so an interrupted generation
resumes where it stopped and a changed setting or simulator never reuses stale data. Measured here
(2 shared cores): ~3-5 s per subject to simulate and preprocess, ~0.05 s to load a cached one.

Landmarks of the simulator (pixel ``(i, j)`` = source ``(x, y)`` voxel indices) are mapped through
the preprocessing record to item pixels ``(x = column, y = row)`` of the ``(H, W)`` item grid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm.constants import REFERENCE_SPACING_MM, View
from cmrfm.data.preprocess import PreprocessConfig, PreprocessRecord, preprocess_series
from cmrfm.data.study import Series, Study
from cmrfm.tasks.mixed import ItemMaker, spread
from cmrfm.tasks.sources import cache_home

#: Landmark names per view family, in the simulator's slot order.
SAX_MARKS = ("rv_insertion_anterior", "rv_insertion_inferior")
LAX_MARKS = ("mitral_hinge_septal", "mitral_hinge_lateral", "lv_apex")
#: Landmark slots stored per item (the longer family).
NUM_MARKS = 3
#: Cine frames kept besides ED and ES: a mid-diastolic one at this cycle fraction.
MID_DIASTOLE_FRACTION = 0.7
#: Cache format version (bump when the stored arrays change).
COHORT_VERSION = 1
#: Settings of the tiny cohort used by ``synthetic_data`` (tests, smoke runs): small matrix, coarse
#: pixels, few frames, no supersampling; items are preprocessed at :data:`TINY_SPACING_MM`.
TINY_SIM_OVERRIDES = (
    "n_frames=3",
    "imaging.matrix=[48,48]",
    "imaging.fov_mm=[240,240]",
    "imaging.supersample=1",
    "imaging.depth_samples=1",
    "imaging.n_coils=2",
)
TINY_SPACING_MM = 5.0


@dataclass(frozen=True)
class CohortSpec:
    """What cohort to simulate and how to preprocess it.

    Attributes:
        subjects: Number of simulated subjects.
        seed: Cohort seed.
        n_frames: Cine frames per cycle in the simulator.
        size: Item grid side (pixels).
        spacing_mm: Item pixel spacing (mm).
        sim_overrides: Extra simulator ``key=value`` settings (e.g. ``artefact.grade_probs=[...]``).
    """

    subjects: int = 60
    seed: int = 0
    n_frames: int = 6
    size: int = 128
    spacing_mm: float = REFERENCE_SPACING_MM
    sim_overrides: tuple[str, ...] = ()

    def sim_config(self):
        """The simulator config: all four sequences, all four views, plus the overrides."""
        from cmrfm.simulate import make_config

        return make_config(
            [
                "sequences=[cine,lge,t1map,t2map]",
                "views=[sax,2ch,3ch,4ch]",
                f"n_frames={self.n_frames}",
                *self.sim_overrides,
            ]
        )

    def key(self) -> str:
        """Hash of every setting but the subject count, and of the simulator's source (cache folder).

        Subject ``i`` depends only on the seed and the settings, so a smaller cohort reuses the
        first subjects of a larger one and a larger one only simulates the missing ones.
        """
        settings = {k: v for k, v in asdict(self).items() if k != "subjects"}
        text = json.dumps(
            {"version": COHORT_VERSION, "simulator": simulator_digest(), **settings}, sort_keys=True
        )
        return hashlib.sha1(text.encode()).hexdigest()[:10]


@lru_cache(maxsize=1)
def simulator_digest() -> str:
    """Hash of the simulator's source files: a changed simulator never reuses a cached cohort."""
    import cmrfm.simulate

    digest = hashlib.sha1()
    for path in sorted(Path(cmrfm.simulate.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def tiny_spec(num_subjects: int, image_size: int) -> CohortSpec:
    """A tiny, fast cohort for ``synthetic_data`` (about 1 s per subject)."""
    return CohortSpec(
        subjects=num_subjects,
        seed=0,
        n_frames=3,
        size=image_size,
        spacing_mm=TINY_SPACING_MM,
        sim_overrides=TINY_SIM_OVERRIDES,
    )


@dataclass
class SimSubject:
    """One simulated subject's preprocessed items.

    Attributes:
        subject: Subject id (``sim0000`` ...).
        group: Disease group.
        images: ``(N, H, W)`` float16 normalised images.
        labels: ``(N, H, W)`` uint8 internal label ids.
        landmarks: ``(N, 3, 2)`` float32 item pixels (x, y); SAX items use the first two slots.
        landmark_valid: ``(N, 3)`` bool.
        rows: One dict per item: ``series``, ``sequence``, ``view``, ``frame``, ``phase``
            (ED/ES/other/na), ``slice``, ``n_slices``, ``grade`` (CMRxMotion 1-3 of its series; maps
            are always 1: the simulator applies no motion to them), ``amplitude_mm``, ``spacing``
            ``(x, y, z)`` mm.
    """

    subject: str
    group: str
    images: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray
    landmark_valid: np.ndarray
    rows: list[dict[str, Any]] = field(default_factory=list)

    def select(self, predicate: Callable[[dict[str, Any]], bool]) -> list[int]:
        """Indices of the items whose row satisfies ``predicate``."""
        return [k for k, row in enumerate(self.rows) if predicate(row)]


def _phase(study: Study, series: Series, frame: int) -> str:
    if series.num_frames == 1:
        return "na"
    if frame == study.clinical.ed_frame:
        return "ED"
    if frame == study.clinical.es_frame:
        return "ES"
    return "other"


def _kept_frames(study: Study, series: Series) -> list[int]:
    if series.num_frames == 1:
        return [0]
    mid = round(MID_DIASTOLE_FRACTION * series.num_frames) % series.num_frames
    return sorted({int(study.clinical.ed_frame or 0), int(study.clinical.es_frame or 0), mid})


def to_item_pixels(points: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Source voxel ``(x, y)`` points ``(K, 2)`` -> item pixels ``(x = column, y = row)``.

    Inverse of the forward map ``x = origin_x + w · step_x``, ``y = origin_y + h · step_y``.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    w = (points[:, 0] - record.origin[0]) / record.step[0]
    h = (points[:, 1] - record.origin[1]) / record.step[1]
    return np.stack([w, h], axis=-1).astype(np.float32)  # (K, 2)


def _landmarks(series: Series, frame: int, z: int, record: PreprocessRecord) -> tuple[np.ndarray, np.ndarray]:
    names = SAX_MARKS if series.view == View.SAX else LAX_MARKS
    marks = series.metadata.get("landmarks", {}).get(str(frame), {}).get(str(z), {})
    points = np.full((NUM_MARKS, 2), np.nan, np.float32)
    valid = np.zeros(NUM_MARKS, bool)
    for slot, name in enumerate(names):
        if name in marks:
            points[slot] = to_item_pixels(np.array(marks[name]["pixel"]), record)[0]
            valid[slot] = True
    return points, valid


def study_arrays(study: Study, spec: CohortSpec) -> dict[str, Any]:
    """Preprocesses every series of a simulated study into stacked item arrays and rows."""
    config = PreprocessConfig(size=spec.size, spacing_mm=spec.spacing_mm)
    images, labels, marks, valid, rows = [], [], [], [], []
    for series in study.series:
        frames = _kept_frames(study, series)
        prepared = preprocess_series(series, config, frames=frames)
        is_map = series.sequence is not None and str(series.sequence).endswith("map")
        grade = 1 if is_map else int(series.metadata.get("motion_grade", 1))
        spacing = (spec.spacing_mm, spec.spacing_mm, float(series.spacing[2]))
        for t in frames:
            stack = prepared.images[t]  # (Z, H, W)
            for z in range(stack.shape[0]):
                points, ok = _landmarks(series, t, z, prepared.record)
                images.append(stack[z].astype(np.float16))
                labels.append(prepared.labels[t][z])
                marks.append(points)
                valid.append(ok)
                rows.append(
                    {
                        "series": series.name,
                        "sequence": str(series.sequence),
                        "view": str(series.view),
                        "frame": t,
                        "phase": _phase(study, series, t),
                        "slice": z,
                        "n_slices": stack.shape[0],
                        "grade": grade,
                        "amplitude_mm": float(series.metadata.get("motion_amplitude_mm", 0.0)),
                        "spacing": spacing,
                    }
                )
    return {
        "images": np.stack(images),  # (N, H, W)
        "labels": np.stack(labels),  # (N, H, W)
        "landmarks": np.stack(marks),  # (N, 3, 2)
        "landmark_valid": np.stack(valid),  # (N, 3)
        "rows": rows,
        "group": str(study.clinical.group),
    }


def simulate_subject(index: int, spec: CohortSpec) -> SimSubject:
    """Simulates and preprocesses subject ``index`` of the cohort (deterministic)."""
    from cmrfm.simulate.cohort import subject_seed
    from cmrfm.simulate.config import SIM_GROUPS
    from cmrfm.simulate.generator import simulate_study, subject_params

    config = spec.sim_config()
    seed = subject_seed(spec.seed, index)
    groups = list(config.groups) or [str(g) for g in SIM_GROUPS]
    params = subject_params(seed, config, group=groups[index % len(groups)])
    name = f"sim{index:04d}"
    study = simulate_study(params, config, seed=seed, study_id=name)
    arrays = study_arrays(study, spec)
    return SimSubject(name, arrays.pop("group"), **arrays)


def _save(subject: SimSubject, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        images=subject.images,
        labels=subject.labels,
        landmarks=subject.landmarks,
        landmark_valid=subject.landmark_valid,
        meta=np.array(json.dumps({"subject": subject.subject, "group": subject.group, "rows": subject.rows})),
    )
    tmp.replace(path)


def _load(path: Path) -> SimSubject:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        rows = [{**r, "spacing": tuple(r["spacing"])} for r in meta["rows"]]
        return SimSubject(
            meta["subject"],
            meta["group"],
            data["images"],
            data["labels"],
            data["landmarks"],
            data["landmark_valid"],
            rows,
        )


def cohort_folder(spec: CohortSpec) -> Path:
    """Where the cohort's cached subjects live."""
    return cache_home() / "simulated" / f"cohort-{spec.key()}"


def _indices(spec: CohortSpec, progress: bool) -> Iterator[int]:
    if not progress:
        yield from range(spec.subjects)
        return
    from rich.progress import track

    yield from track(range(spec.subjects), description="simulated cohort", transient=True)


def load_cohort(spec: CohortSpec, use_cache: bool = True, progress: bool = True) -> list[SimSubject]:
    """The cohort's subjects, simulating (and caching) those not cached yet.

    Args:
        spec: Cohort settings.
        use_cache: Read and write ``$CMRFM_CACHE/simulated``; False keeps everything in memory.
        progress: Show a progress bar while simulating.
    """
    folder = cohort_folder(spec)
    if use_cache:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
        missing = sum(not (folder / f"sim{i:04d}.npz").is_file() for i in range(spec.subjects))
        if missing and progress:
            print(f"simulating {missing} of {spec.subjects} subjects once (cached in {folder})")
    subjects = []
    for index in _indices(spec, progress):
        path = folder / f"sim{index:04d}.npz"
        if use_cache and path.is_file():
            subjects.append(_load(path))
            continue
        subject = simulate_subject(index, spec)
        if use_cache:
            _save(subject, path)
        subjects.append(subject)
    return subjects


@lru_cache(maxsize=4)
def tiny_cohort(num_subjects: int, image_size: int) -> tuple[SimSubject, ...]:
    """The tiny in-memory cohort of ``synthetic_data`` (simulated once per process)."""
    return tuple(load_cohort(tiny_spec(num_subjects, image_size), use_cache=False, progress=False))


def sim_cohort(
    subjects: int,
    seed: int,
    n_frames: int,
    size: int,
    synthetic: bool = False,
    overrides: Sequence[str] = (),
) -> Sequence[SimSubject]:
    """The task-facing entry: the real-budget cohort, or the tiny one when ``synthetic``.

    ``overrides`` are extra simulator ``key=value`` settings of the real-budget cohort (its own
    cache folder); the tiny cohort ignores them.
    """
    if synthetic:
        return tiny_cohort(subjects, size)
    spec = CohortSpec(
        subjects=subjects, seed=seed, n_frames=n_frames, size=size, sim_overrides=tuple(overrides)
    )
    return load_cohort(spec)


def sim_item(subject: SimSubject, k: int) -> dict[str, Any]:
    """Item ``k`` of a subject as a task item base: image, internal-label mask, meta, spacing."""
    row = subject.rows[k]
    return {
        "image": subject.images[k],
        "subject": subject.subject,
        "spacing": np.asarray(row["spacing"], np.float32),
        "slice": int(row["slice"]),
        "volume": f"{subject.subject}/{row['series']}/f{row['frame']}",
    }


def seg_sim_item(subject: SimSubject, k: int, lookup: np.ndarray) -> dict[str, Any]:
    """A simulated slice as a segmentation item (internal ids mapped through ``lookup``)."""
    return {**sim_item(subject, k), "mask": lookup[subject.labels[k]]}


def sim_seg_makers(
    cohort: Sequence[SimSubject], predicate, lookup: np.ndarray, per_series: int = 0
) -> dict[str, list[ItemMaker]]:
    """Per subject: segmentation items of the slices whose row satisfies ``predicate``.

    ``per_series`` > 0 keeps at most that many items of each (series, frame), evenly spread.
    """
    out: dict[str, list[ItemMaker]] = {}
    for s in cohort:
        groups: dict[tuple, list[int]] = {}
        for k in s.select(predicate):
            groups.setdefault((s.rows[k]["series"], s.rows[k]["frame"]), []).append(k)
        chosen = [k for ks in groups.values() for k in spread(ks, per_series)]
        out[s.subject] = [functools.partial(seg_sim_item, s, k, lookup) for k in chosen]
    return out

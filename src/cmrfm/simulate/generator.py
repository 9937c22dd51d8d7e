"""Studies and 2D training items from the simulator.

* :func:`simulate_study` builds one subject's :class:`~cmrfm.data.study.Study` (cine SAX/LAX, LGE,
  T1/T2 maps) with labels on every frame and all ground truth in ``Series.metadata`` and
  ``Study.clinical``.
* :class:`cmrfm.simulate.dataset.SimulatedSliceDataset` (re-exported here lazily: it imports torch,
  and this module stays light for the CLI) yields 2D items rendered on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrfm.config import merge_into
from cmrfm.constants import Group, Sequence, View
from cmrfm.data.study import ClinicalInfo, Series, Study
from cmrfm.errors import ConfigError
from cmrfm.simulate.anatomy import Phantom
from cmrfm.simulate.config import SimConfig, validate_config
from cmrfm.simulate.contrast import signal_table
from cmrfm.simulate.groundtruth import (
    analytic_truth,
    ejection_fraction,
    lax_landmarks,
    sax_landmarks,
    volumes_from_labels,
)
from cmrfm.simulate.motion import RESPIRATORY_DIRECTION, es_frame, frame_fractions
from cmrfm.simulate.params import SubjectParams, sample_subject
from cmrfm.simulate.planes import Plane, lax_plane, sax_stack, stack_affine
from cmrfm.simulate.render import acquire
from cmrfm.simulate.tissue import label_lookup

#: Cycle fraction (mid-diastole) at which LGE and mapping images are acquired.
DIASTOLE_T = 0.7
#: Smallest matrix a per-subject matrix scale may produce.
MIN_MATRIX = 16
#: Random-stream ids (second element of each numpy seed sequence).
STREAM_PARAMS, STREAM_IMAGING, STREAM_SERIES = 0, 1, 2


@dataclass
class SubjectSetup:
    """Imaging choices fixed per subject (same scanner session)."""

    field_strength: float
    matrix: tuple[int, int]
    spacing: float
    sax_thickness: float
    sax_gap: float
    base_margin: float
    lax_thickness: float
    rr_ms: float


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *stream])


def _setup(
    config: SimConfig, params: SubjectParams, rng: np.random.Generator, vary_matrix: bool = True
) -> SubjectSetup:
    im = config.imaging
    fov = float(rng.uniform(*im.fov_mm))
    scale = float(rng.uniform(*im.matrix_scale)) if vary_matrix else 1.0
    matrix = (
        im.matrix if scale == 1.0 else tuple(max(MIN_MATRIX, 2 * round(m * scale / 2)) for m in im.matrix)
    )
    return SubjectSetup(
        field_strength=float(im.field_strengths[int(rng.integers(len(im.field_strengths)))]),
        matrix=(int(matrix[0]), int(matrix[1])),
        spacing=fov / matrix[0],
        sax_thickness=float(rng.uniform(*config.sax.slice_thickness_mm)),
        sax_gap=float(rng.uniform(*config.sax.slice_gap_mm)),
        base_margin=float(rng.uniform(*config.sax.base_margin_mm)),
        lax_thickness=float(rng.uniform(*config.lax.slice_thickness_mm)),
        rr_ms=60_000.0 / params.heart_rate_bpm,
    )


def _grade(config: SimConfig, rng: np.random.Generator) -> int:
    if config.artefact.motion_grade:
        return int(config.artefact.motion_grade)
    probs = np.asarray(config.artefact.grade_probs, dtype=np.float64)
    return int(rng.choice(3, p=probs / probs.sum())) + 1


def acquire_series(
    config: SimConfig,
    setup: SubjectSetup,
    phantom: Phantom,
    planes: list[Plane],
    t_fracs: np.ndarray,
    sequence: Sequence,
    view: View,
    shifts: np.ndarray,
    rng: np.random.Generator,
):
    """Contrast, motion grade and acquisition of one series (the one place both generators call).

    Draws the sequence's signal table and the artefact grade from ``rng``, then renders ``planes``
    at the cardiac phases ``t_fracs`` with the subject's scanner settings. Returns the
    :func:`~cmrfm.simulate.render.acquire` result, the signal table and the grade.
    """
    im = config.imaging
    table = signal_table(sequence, setup.field_strength, rng, setup.rr_ms, im.map_noise)
    grade = _grade(config, rng)
    acq = acquire(
        phantom,
        planes,
        t_fracs,
        table,
        label_lookup(view != View.SAX, sequence == Sequence.LGE),
        shifts,
        rng,
        supersample=im.supersample,
        depth_samples=im.depth_samples,
        snr=float(rng.uniform(*im.snr)),
        coil_shading=im.coil_shading,
        n_coils=im.n_coils,
        grade=grade,
        motion_levels=config.artefact.motion_levels,
        rr_ms=setup.rr_ms,
    )
    return acq, table, grade


def _breath_hold_offsets(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Per-slice anatomy offsets ``(n, 3)`` between breath-holds (mostly along the respiratory axis)."""
    along = rng.normal(0, sigma, n)[:, None] * RESPIRATORY_DIRECTION[None]
    across = rng.normal(0, sigma / 3, (n, 3))
    return along + across


def subject_params(
    seed: int, config: SimConfig | None = None, group: str | Group | None = None
) -> SubjectParams:
    """The subject parameters :func:`simulate_study` uses for an integer seed."""
    config = config or SimConfig()
    rng = _rng(seed, STREAM_PARAMS)
    if group is None and config.groups:
        group = config.groups[int(rng.integers(len(config.groups)))]
    params = sample_subject(rng, group=group)
    params.seed = int(seed)
    return params


def make_config(
    overrides: list[str] | dict[str, Any] | None = None, base: SimConfig | None = None
) -> SimConfig:
    """A validated :class:`SimConfig` from ``key=value`` strings or a nested dict."""
    from cmrfm.config import parse_overrides

    config = base or SimConfig()
    if overrides:
        values = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        config = merge_into(config, values)
    return validate_config(config)


def _series_landmarks(phantom: Phantom, planes: list[Plane], t_fracs: np.ndarray, shifts: np.ndarray) -> dict:
    out: dict[str, dict[str, dict]] = {}
    for f, t in enumerate(t_fracs):
        per_slice = {}
        for z, plane in enumerate(planes):
            if plane.view == View.SAX:
                marks = sax_landmarks(
                    phantom, plane, float(t), shifts[z], probe_mm=max(2.0, plane.spacing[0])
                )
            else:
                marks = lax_landmarks(phantom, plane, float(t), shifts[z])
            if marks:
                per_slice[str(z)] = marks
        out[str(f)] = per_slice
    return out


def simulate_study(
    subject: SubjectParams | int = 0,
    config: SimConfig | None = None,
    seed: int | None = None,
    study_id: str | None = None,
) -> Study:
    """Simulates one subject's study: every configured sequence and view with full ground truth.

    Args:
        subject: Subject parameters, or an integer seed from which they are drawn (using
            ``config.groups``).
        config: Simulation settings (defaults: :class:`SimConfig`).
        seed: Seed of the imaging randomness (defaults to the subject seed, or ``params.seed``, or 0).
        study_id: Study id (default ``sim<seed>``).

    Returns:
        A :class:`Study` whose series carry labels on every frame; ``clinical.extra`` holds the
        subject truth (analytic and mask-based volumes, EF, mass, parameters).

    Raises:
        ConfigError: For invalid settings or subject parameters.
    """
    config = validate_config(config or SimConfig())
    if isinstance(subject, SubjectParams):
        params = subject
        seed = int(seed if seed is not None else (params.seed if params.seed is not None else 0))
    elif isinstance(subject, int | np.integer):
        seed = int(subject if seed is None else seed)
        params = subject_params(int(subject), config)
    else:
        raise ConfigError(f"subject must be SubjectParams or an int seed, got {type(subject).__name__}")
    phantom = Phantom(params, config.es_fraction)
    setup = _setup(config, params, _rng(seed, STREAM_IMAGING))
    es = es_frame(config.n_frames, config.es_fraction)
    cine_t = frame_fractions(config.n_frames)
    series: list[Series] = []
    sax_series: Series | None = None
    plan: list[tuple[Sequence, View]] = []
    if Sequence.CINE in config.sequences:
        plan += [(Sequence.CINE, View(v)) for v in config.views]
    plan += [(Sequence(s), View.SAX) for s in config.sequences if s != Sequence.CINE]
    for index, (sequence, view) in enumerate(plan):
        rng = _rng(seed, STREAM_SERIES, index)
        t_fracs = cine_t if sequence == Sequence.CINE else np.array([DIASTOLE_T])
        if view == View.SAX:
            planes = sax_stack(
                phantom,
                setup.matrix,
                setup.spacing,
                setup.sax_thickness,
                setup.sax_gap,
                setup.base_margin,
                rng,
            )
            shifts = _breath_hold_offsets(len(planes), config.artefact.misalignment_mm, rng)
        else:
            planes = [
                lax_plane(
                    phantom,
                    view,
                    setup.matrix,
                    setup.spacing,
                    setup.lax_thickness,
                    config.lax.angle_jitter_deg,
                    rng,
                )
            ]
            shifts = _breath_hold_offsets(1, config.artefact.misalignment_mm, rng)
        acq, table, _ = acquire_series(config, setup, phantom, planes, t_fracs, sequence, view, shifts, rng)
        times = t_fracs * setup.rr_ms
        metadata = {
            "vendor": "simulator",
            "manufacturer": "cmrfm-simulator",
            "field_strength_t": setup.field_strength,
            "slice_thickness_mm": round(planes[0].thickness, 3),
            "sequence_params": table.params,
            **acq.info,
            "breath_hold_offsets_mm": np.round(shifts, 3).tolist(),
            "landmarks": _series_landmarks(phantom, planes, t_fracs, shifts),
            "group": str(params.group),
            "subject_seed": seed,
        }
        if planes[0].angle_deg is not None:
            metadata["plane_angle_deg"] = round(planes[0].angle_deg, 3)
        s = Series(
            name=f"{view}_{sequence}",
            image=acq.image,
            affine=stack_affine(planes),
            sequence=sequence,
            view=view,
            frame_times_ms=times,
            labels={t: acq.labels[..., t] for t in range(len(t_fracs))},
            metadata=metadata,
        )
        series.append(s)
        if sequence == Sequence.CINE and view == View.SAX:
            sax_series = s
    truth = analytic_truth(phantom, float(cine_t[es]))
    if sax_series is not None:
        spacing = sax_series.spacing
        ed_v = volumes_from_labels(sax_series.labels[0], spacing)
        es_v = volumes_from_labels(sax_series.labels[es], spacing)
        truth.update(
            {
                "lv_edv_ml_mask": round(ed_v["lv_ml"], 3),
                "lv_esv_ml_mask": round(es_v["lv_ml"], 3),
                "lv_ef_mask": round(ejection_fraction(ed_v["lv_ml"], es_v["lv_ml"]), 4),
                "rv_edv_ml_mask": round(ed_v["rv_ml"], 3),
                "rv_esv_ml_mask": round(es_v["rv_ml"], 3),
                "rv_ef_mask": round(ejection_fraction(ed_v["rv_ml"], es_v["rv_ml"]), 4),
                "lv_mass_g_mask": round(ed_v["lv_mass_g"], 3),
            }
        )
    clinical = ClinicalInfo(
        group=params.group,
        height_cm=params.height_cm,
        weight_kg=params.weight_kg,
        ed_frame=0,
        es_frame=es,
        infarct=bool(params.territory),
        extra={
            "truth": truth,
            "params": params.to_dict(),
            "sex": params.sex,
            "age": params.age,
            "field_strength_t": setup.field_strength,
        },
    )
    return Study(
        study_id or f"sim{seed:05d}", series, clinical=clinical, source="simulator", dataset="simulator"
    )


def __getattr__(name: str) -> Any:
    if name == "SimulatedSliceDataset":  # lazy: the dataset imports torch
        from cmrfm.simulate.dataset import SimulatedSliceDataset

        return SimulatedSliceDataset
    raise AttributeError(name)

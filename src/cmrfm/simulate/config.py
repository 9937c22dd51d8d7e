"""Typed configs of the simulator, settable as ``key=value`` through :func:`cmrfm.config.build_config`.

Ranges are ``(low, high)`` tuples sampled uniformly per subject or series; give equal values to fix one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cmrfm.constants import Group, Sequence, View
from cmrfm.errors import ConfigError
from cmrfm.simulate.tissue import FIELD_STRENGTHS

#: Sequences the simulator renders.
SIM_SEQUENCES = (Sequence.CINE, Sequence.LGE, Sequence.T1_MAP, Sequence.T2_MAP)
#: Views the simulator renders.
SIM_VIEWS = (View.SAX, View.TWO_CH, View.THREE_CH, View.FOUR_CH)
#: Pathology groups the simulator samples.
SIM_GROUPS = tuple(Group)


@dataclass
class ImagingConfig:
    """Acquisition and rendering settings.

    Attributes:
        field_strengths: Field strengths (T) to draw from per subject.
        matrix: In-plane matrix (X = readout, Y = phase encode) in pixels.
        fov_mm: Range of the field of view along X (mm); spacing = fov / matrix.
        matrix_scale: Range of a per-subject factor on the matrix in :func:`simulate_study` (cohorts
            with varying matrices); the 2D dataset always uses ``matrix``.
        supersample: Fine samples per pixel edge for partial-volume integration.
        depth_samples: Samples through the slice thickness (partial volume through-plane).
        snr: Range of myocardial SNR (mean myocardium signal / noise sigma) for cine/LGE.
        map_noise: Relative noise (fraction of the value) of T1/T2 maps in tissue.
        coil_shading: Strength (0..1) of receive-coil intensity shading.
        n_coils: Receive coils for shading and multi-coil k-space.
    """

    field_strengths: tuple[float, ...] = (1.5, 3.0)
    matrix: tuple[int, int] = (160, 160)
    fov_mm: tuple[float, float] = (300.0, 380.0)
    matrix_scale: tuple[float, float] = (0.8, 1.25)
    supersample: int = 2
    depth_samples: int = 3
    snr: tuple[float, float] = (14.0, 40.0)
    map_noise: float = 0.03
    coil_shading: float = 0.5
    n_coils: int = 8


@dataclass
class SaxConfig:
    """Short-axis stack geometry.

    Attributes:
        slice_thickness_mm: Range of slice thickness (mm).
        slice_gap_mm: Range of the gap between slices (mm); spacing = thickness + gap.
        base_margin_mm: Range of how far above the ED mitral plane the first slice sits (mm).
    """

    slice_thickness_mm: tuple[float, float] = (6.0, 8.0)
    slice_gap_mm: tuple[float, float] = (1.0, 3.0)
    base_margin_mm: tuple[float, float] = (-2.0, 6.0)


@dataclass
class LaxConfig:
    """Long-axis plane settings.

    Attributes:
        slice_thickness_mm: Range of slice thickness (mm).
        angle_jitter_deg: Standard deviation of the plane's rotation about the LV axis (degrees).
    """

    slice_thickness_mm: tuple[float, float] = (6.0, 8.0)
    angle_jitter_deg: float = 5.0


@dataclass
class ArtefactConfig:
    """Respiratory-motion artefacts and breath-hold misalignment.

    Attributes:
        motion_grade: Fixed CMRxMotion grade 1..3 for every series, or 0 to draw per series.
        grade_probs: Probabilities of grades 1, 2, 3 when drawn.
        misalignment_mm: Standard deviation (mm) of per-slice breath-hold offsets on SAX stacks.
        motion_levels: Number of distinct respiratory positions mixed in k-space.
    """

    motion_grade: int = 0
    grade_probs: tuple[float, float, float] = (0.7, 0.2, 0.1)
    misalignment_mm: float = 1.5
    motion_levels: int = 5


@dataclass
class SimConfig:
    """Everything :func:`cmrfm.simulate.simulate_study` needs besides the subject.

    Attributes:
        n_frames: Cine frames per cardiac cycle (ED at frame 0).
        es_fraction: End-systole as a fraction of the cycle.
        sequences: Sequences to render (cine on every view; LGE and maps on SAX).
        views: Views for cine.
        groups: Pathology groups to draw from (empty: all five, equally).
        imaging: Acquisition settings.
        sax: SAX stack geometry.
        lax: Long-axis plane settings.
        artefact: Motion artefacts and misalignment.
    """

    n_frames: int = 25
    es_fraction: float = 0.35
    sequences: tuple[str, ...] = ("cine", "lge")
    views: tuple[str, ...] = ("sax", "2ch", "4ch")
    groups: tuple[str, ...] = ()
    imaging: ImagingConfig = field(default_factory=ImagingConfig)
    sax: SaxConfig = field(default_factory=SaxConfig)
    lax: LaxConfig = field(default_factory=LaxConfig)
    artefact: ArtefactConfig = field(default_factory=ArtefactConfig)


def _check_range(name: str, value: tuple[float, float], minimum: float = 0.0, strict: bool = False) -> None:
    low, high = value
    if low > high:
        raise ConfigError(f"{name}: low {low} exceeds high {high}")
    if low < minimum or (strict and low <= minimum):
        raise ConfigError(f"{name}: values must be {'>' if strict else '>='} {minimum}, got {value}")


def validate_config(config: SimConfig) -> SimConfig:
    """Checks a :class:`SimConfig`, raising :class:`~cmrfm.errors.ConfigError` with the bad key."""
    if config.n_frames < 1:
        raise ConfigError(f"n_frames must be >= 1, got {config.n_frames}")
    if not 0.1 <= config.es_fraction <= 0.6:
        raise ConfigError(f"es_fraction must be in [0.1, 0.6], got {config.es_fraction}")
    for seq in config.sequences:
        if seq not in {str(s) for s in SIM_SEQUENCES}:
            raise ConfigError(f"unknown sequence {seq!r}; choose from {[str(s) for s in SIM_SEQUENCES]}")
    for view in config.views:
        if view not in {str(v) for v in SIM_VIEWS}:
            raise ConfigError(f"unknown view {view!r}; choose from {[str(v) for v in SIM_VIEWS]}")
    for group in config.groups:
        if group not in {str(g) for g in SIM_GROUPS}:
            raise ConfigError(f"unknown pathology {group!r}; choose from {[str(g) for g in SIM_GROUPS]}")
    if not config.sequences:
        raise ConfigError("sequences: give at least one sequence")
    if "cine" in config.sequences and not config.views:
        raise ConfigError("views: cine needs at least one view (sax, 2ch, 3ch, 4ch)")
    im = config.imaging
    for fs in im.field_strengths:
        if float(fs) not in FIELD_STRENGTHS:
            raise ConfigError(f"imaging.field_strengths: {fs} T not supported; use {FIELD_STRENGTHS}")
    if not im.field_strengths:
        raise ConfigError("imaging.field_strengths: give at least one field strength")
    if min(im.matrix) < 16 or max(im.matrix) > 1024:
        raise ConfigError(f"imaging.matrix must be within 16..1024 pixels, got {im.matrix}")
    _check_range("imaging.fov_mm", im.fov_mm, 50.0)
    _check_range("imaging.matrix_scale", im.matrix_scale, 0.25)
    _check_range("imaging.snr", im.snr, 0.0, strict=True)
    if im.supersample < 1 or im.depth_samples < 1:
        raise ConfigError("imaging.supersample and imaging.depth_samples must be >= 1")
    if not 0.0 <= im.coil_shading <= 1.0:
        raise ConfigError(f"imaging.coil_shading must be in [0, 1], got {im.coil_shading}")
    if im.n_coils < 1:
        raise ConfigError(f"imaging.n_coils must be >= 1, got {im.n_coils}")
    if im.map_noise < 0:
        raise ConfigError(f"imaging.map_noise must be >= 0, got {im.map_noise}")
    _check_range("sax.slice_thickness_mm", config.sax.slice_thickness_mm, 0.5)
    _check_range("sax.slice_gap_mm", config.sax.slice_gap_mm, 0.0)
    _check_range("lax.slice_thickness_mm", config.lax.slice_thickness_mm, 0.5)
    art = config.artefact
    if art.motion_grade not in (0, 1, 2, 3):
        raise ConfigError(f"artefact.motion_grade must be 0 (random) or 1..3, got {art.motion_grade}")
    if len(art.grade_probs) != 3 or min(art.grade_probs) < 0 or sum(art.grade_probs) <= 0:
        raise ConfigError(f"artefact.grade_probs must be three non-negative weights, got {art.grade_probs}")
    if art.misalignment_mm < 0:
        raise ConfigError(f"artefact.misalignment_mm must be >= 0, got {art.misalignment_mm}")
    if art.motion_levels < 2:
        raise ConfigError(f"artefact.motion_levels must be >= 2, got {art.motion_levels}")
    return config

"""Subject parameters sampled conditioned on sex, age, body size and pathology.

One :class:`SubjectParams` fully determines a simulated heart and body; images are then drawn from it
with imaging settings. Values are physical (mm, mL, fractions of one) so they can be checked.

SOURCES (reference ranges used for sampling; means ± SD, indexed to body-surface area, BSA):
    - Kawel-Boehm N et al. "Normal values for cardiovascular magnetic resonance in adults and
      children." JCMR 2015;17:29, and the 2020 update (JCMR 22:87). bSSFP, papillary muscles in the
      cavity: LV EDVi men 82 ± 13 / women 78 ± 12 mL/m²; LVEF 67 ± 5 %; RV EDVi men 88 ± 15 / women
      79 ± 13 mL/m²; RVEF 60 ± 6 %; LV mass index men 64 ± 11 / women 53 ± 9 g/m². Volumes fall and
      EF rises mildly with age (Maceira AM et al. JCMR 2006;8:417-426).
    - Kawel N et al. "Normal left ventricular myocardial thickness for middle-aged and older
      subjects with SSFP CMR: the MESA study." Circ Cardiovasc Imaging 2012;5:500-508 (end-diastolic
      wall 6-10 mm, thicker at the basal septum, thinnest at the apex, men ~1 mm thicker).
    - Bernard O et al. "Deep learning techniques for automatic MRI cardiac multi-structures
      segmentation and diagnosis: is the problem solved?" IEEE TMI 2018;37:2514-2525 (ACDC group
      definitions: DCM EF < 40 % and LV EDVi > 100 mL/m²; HCM EF > 55 %, wall > 15 mm in diastole,
      LV mass index > 110 g/m²; MINF EF < 40 % with regional wall-motion abnormality; ARV
      RV EDVi > 110 mL/m² or RV EF < 40 %).
    - Elliott PM et al. 2014 ESC Guidelines on hypertrophic cardiomyopathy (wall >= 15 mm).
    - Cerqueira MD et al. AHA 17-segment model and coronary territories, Circulation 2002;105:539
      (LAD: anterior/anteroseptal/apex; RCA: inferior/inferoseptal; LCx: lateral).
    - Mosteller RD, "Simplified calculation of body-surface area", NEJM 1987;317:1098 (BSA).
    - MAPSE ~12-16 mm in health, reduced in cardiomyopathy (Carlsson M et al. Am J Physiol 2007).
    - Adult height/BMI: WHO/NCD-RisC population summaries (men 176 ± 7 cm, women 163 ± 6.5 cm, BMI
      26 ± 4 kg/m²).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from cmrfm.constants import GROUP_ALIASES, Group
from cmrfm.errors import ConfigError

#: Sex codes.
SEXES = ("M", "F")
#: Coronary territories for infarcts: (centre angle deg, half-width deg) in the heart frame, where
#: angle 0 = septum (towards the RV), 90 = anterior, 180 = lateral, 270 = inferior.
TERRITORIES: dict[str, tuple[float, float]] = {
    "LAD": (50.0, 60.0),
    "LCX": (180.0, 45.0),
    "RCA": (285.0, 45.0),
}

_HEIGHT_CM = {"M": (176.0, 7.0), "F": (163.0, 6.5)}
_BMI = (26.0, 4.0)
_LV_EDVI = {"M": 82.0, "F": 78.0}
_RV_EDVI = {"M": 88.0, "F": 79.0}
_WALL_MM = {"M": 9.0, "F": 8.0}


@dataclass
class SubjectParams:
    """Physical parameters of one simulated subject (mm, mL, fractions).

    Attributes:
        group: Pathology group.
        sex: ``"M"`` or ``"F"``.
        age: Years.
        height_cm: Height.
        weight_kg: Weight.
        heart_rate_bpm: Heart rate (sets the RR interval and frame times).
        lv_edv_ml: Target LV end-diastolic volume (cavity incl. papillary muscles).
        lv_ef: Target LV ejection fraction (0..1).
        rv_edv_ml: Target RV end-diastolic volume.
        rv_ef: Target RV ejection fraction (0..1).
        wall_septal_mm: End-diastolic septal wall thickness.
        wall_lateral_mm: End-diastolic lateral wall thickness.
        wall_apex_mm: End-diastolic apical wall thickness.
        rv_wall_mm: RV free-wall thickness.
        sphericity: LV cavity radius / half long axis at ED (higher = rounder).
        base_fraction: Height of the mitral plane above the cavity ellipsoid centre / half long axis.
        long_shortening: Fraction by which the LV half long axis shortens at ES.
        ellipticity: In-plane cavity ellipticity (0 = circular).
        territory: Infarct territory (``""`` none, ``LAD``, ``LCX``, ``RCA``).
        infarct_centre_deg: Centre angle of the scar.
        infarct_width_deg: Angular width of the scar.
        transmurality: Scar depth as a fraction of the wall (0..1).
        infarct_z: Long-axis extent of the scar as fractions of apex (0) .. base (1).
        mvo: Whether the scar has a microvascular-obstruction core.
        akinesis: Residual radial motion in the infarct territory (0 = akinetic, 1 = normal).
        axis_azimuth_deg: Azimuth of the LV long axis in the axial plane.
        axis_elevation_deg: Elevation of the LV long axis above the axial plane.
        axis_roll_deg: Rotation of the heart about its long axis.
        heart_offset_mm: World (RAS) position of the LV cavity centre at ED.
        body_lr_mm: Body half-width (left-right).
        body_ap_mm: Body half-depth (anterior-posterior).
        fat_mm: Subcutaneous fat thickness.
        muscle_mm: Chest-wall muscle thickness.
        la_radius_mm: Left-atrial radius at ED.
        ra_radius_mm: Right-atrial radius at ED.
        aorta_radius_mm: Ascending-aorta radius.
        seed: Seed the parameters were drawn with (``None`` when set by hand).
    """

    group: Group = Group.NOR
    sex: str = "M"
    age: float = 45.0
    height_cm: float = 176.0
    weight_kg: float = 78.0
    heart_rate_bpm: float = 68.0
    lv_edv_ml: float = 155.0
    lv_ef: float = 0.64
    rv_edv_ml: float = 165.0
    rv_ef: float = 0.60
    wall_septal_mm: float = 9.0
    wall_lateral_mm: float = 8.0
    wall_apex_mm: float = 5.5
    rv_wall_mm: float = 3.5
    sphericity: float = 0.55
    base_fraction: float = 0.3
    long_shortening: float = 0.15
    ellipticity: float = 0.04
    territory: str = ""
    infarct_centre_deg: float = 0.0
    infarct_width_deg: float = 0.0
    transmurality: float = 0.0
    infarct_z: tuple[float, float] = (0.0, 0.0)
    mvo: bool = False
    akinesis: float = 1.0
    axis_azimuth_deg: float = -45.0
    axis_elevation_deg: float = 35.0
    axis_roll_deg: float = 0.0
    heart_offset_mm: tuple[float, float, float] = (-30.0, 15.0, 0.0)
    body_lr_mm: float = 170.0
    body_ap_mm: float = 115.0
    fat_mm: float = 14.0
    muscle_mm: float = 12.0
    la_radius_mm: float = 22.0
    ra_radius_mm: float = 22.0
    aorta_radius_mm: float = 14.0
    seed: int | None = field(default=None, compare=False)

    @property
    def bsa_m2(self) -> float:
        """Body-surface area (Mosteller), m²."""
        return math.sqrt(self.height_cm * self.weight_kg / 3600.0)

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        out = dataclasses.asdict(self)
        out["group"] = str(self.group)
        out["infarct_z"] = list(self.infarct_z)
        out["heart_offset_mm"] = list(self.heart_offset_mm)
        out["bsa_m2"] = round(self.bsa_m2, 4)
        return out


def parse_group(value: str | Group) -> Group:
    """Maps a group spelling (``NOR``, ``RV``, ``ARV``, ...) to :class:`Group`.

    Raises:
        ConfigError: For an unknown pathology.
    """
    if isinstance(value, Group):
        return value
    key = str(value).strip().upper()
    if key not in GROUP_ALIASES:
        raise ConfigError(f"unknown pathology {value!r}; choose one of {[str(g) for g in Group]}")
    return GROUP_ALIASES[key]


def validate_params(p: SubjectParams) -> SubjectParams:
    """Checks physical plausibility, raising :class:`ConfigError` naming the bad parameter."""
    parse_group(p.group)
    if p.sex not in SEXES:
        raise ConfigError(f"sex must be one of {SEXES}, got {p.sex!r}")
    positive = {
        "height_cm": p.height_cm,
        "weight_kg": p.weight_kg,
        "heart_rate_bpm": p.heart_rate_bpm,
        "lv_edv_ml": p.lv_edv_ml,
        "rv_edv_ml": p.rv_edv_ml,
        "wall_septal_mm": p.wall_septal_mm,
        "wall_lateral_mm": p.wall_lateral_mm,
        "wall_apex_mm": p.wall_apex_mm,
        "rv_wall_mm": p.rv_wall_mm,
        "sphericity": p.sphericity,
        "body_lr_mm": p.body_lr_mm,
        "body_ap_mm": p.body_ap_mm,
        "la_radius_mm": p.la_radius_mm,
        "ra_radius_mm": p.ra_radius_mm,
        "aorta_radius_mm": p.aorta_radius_mm,
    }
    for name, value in positive.items():
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"subject parameter {name} must be positive, got {value}")
    for name in ("fat_mm", "muscle_mm"):
        if getattr(p, name) < 0:
            raise ConfigError(f"subject parameter {name} must be >= 0, got {getattr(p, name)}")
    for name in ("lv_ef", "rv_ef"):
        value = getattr(p, name)
        if not 0.03 <= value <= 0.9:
            raise ConfigError(f"subject parameter {name} must be a fraction in [0.03, 0.9], got {value}")
    if not 0.0 <= p.long_shortening < 0.4:
        raise ConfigError(f"long_shortening must be in [0, 0.4), got {p.long_shortening}")
    if not 0.0 <= p.base_fraction <= 0.7:
        raise ConfigError(f"base_fraction must be in [0, 0.7], got {p.base_fraction}")
    if p.infarct_z[0] > p.infarct_z[1]:
        raise ConfigError(f"infarct_z must be (low, high), got {p.infarct_z}")
    if not 0.0 <= p.transmurality <= 1.0 or not 0.0 <= p.akinesis <= 1.0:
        raise ConfigError("transmurality and akinesis must be fractions in [0, 1]")
    if p.territory and p.territory not in TERRITORIES:
        raise ConfigError(f"territory must be '' or one of {list(TERRITORIES)}, got {p.territory!r}")
    if max(p.wall_septal_mm, p.wall_lateral_mm) > 40:
        raise ConfigError("wall thickness above 40 mm is not a plausible heart")
    if p.body_lr_mm < 80 or p.body_ap_mm < 60:
        raise ConfigError("body too small to hold a heart (body_lr_mm >= 80, body_ap_mm >= 60)")
    return p


def _normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    return float(np.clip(rng.normal(mean, sd), low, high))


def sample_subject(
    rng: np.random.Generator | int,
    group: str | Group | None = None,
    sex: str | None = None,
    age: float | None = None,
    height_cm: float | None = None,
    weight_kg: float | None = None,
) -> SubjectParams:
    """Draws one subject conditioned on whichever of group, sex, age and body size are given.

    Args:
        rng: A numpy Generator, or an int seed.
        group: Pathology group (random among the five when ``None``).
        sex: ``"M"``/``"F"`` (random when ``None``).
        age: Years (20..80 uniform when ``None``).
        height_cm: Height (sex-specific normal when ``None``).
        weight_kg: Weight (from a BMI draw when ``None``).

    Raises:
        ConfigError: For an unknown group or sex.
    """
    seed = int(rng) if isinstance(rng, int | np.integer) else None
    rng = np.random.default_rng(rng) if seed is not None else rng
    grp = parse_group(group) if group is not None else Group(list(Group)[rng.integers(len(Group))])
    if sex is not None and sex not in SEXES:
        raise ConfigError(f"sex must be one of {SEXES}, got {sex!r}")
    sex = sex or SEXES[int(rng.integers(2))]
    age = float(age) if age is not None else float(rng.uniform(20, 80))
    h_mean, h_sd = _HEIGHT_CM[sex]
    height = float(height_cm) if height_cm is not None else _normal(rng, h_mean, h_sd, 145, 205)
    bmi = _normal(rng, *_BMI, 17.5, 42.0)
    weight = float(weight_kg) if weight_kg is not None else bmi * (height / 100.0) ** 2
    bmi = weight / (height / 100.0) ** 2
    bsa = math.sqrt(height * weight / 3600.0)
    age_term = age - 45.0

    lv_edvi = _normal(rng, _LV_EDVI[sex] - 0.25 * age_term, 10.0, 58, 100)
    lv_ef = _normal(rng, 0.63 + 0.0008 * age_term, 0.045, 0.55, 0.75)
    rv_edvi = _normal(rng, _RV_EDVI[sex] - 0.3 * age_term, 11.0, 60, 105)
    rv_ef = _normal(rng, 0.60, 0.05, 0.50, 0.72)
    wall = _normal(rng, _WALL_MM[sex] + 0.02 * age_term, 0.8, 6.5, 11.0)
    septal, lateral = wall, wall * float(rng.uniform(0.85, 0.95))
    apex = wall * float(rng.uniform(0.55, 0.7))
    sphericity = float(rng.uniform(0.5, 0.6))
    long_shortening = _normal(rng, 0.15, 0.02, 0.11, 0.2)
    hr = _normal(rng, 68, 9, 50, 95)
    territory, centre, width, transmurality, z_range, mvo, akinesis = (
        "",
        0.0,
        0.0,
        0.0,
        (0.0, 0.0),
        False,
        1.0,
    )

    if grp == Group.DCM:
        lv_edvi = _normal(rng, 138, 22, 105, 220)
        lv_ef = float(rng.uniform(0.08, 0.34))
        wall = _normal(rng, 8.0, 0.8, 6.0, 10.0)
        septal, lateral, apex = wall, wall * 0.95, wall * 0.65
        sphericity = float(rng.uniform(0.68, 0.85))
        long_shortening = float(rng.uniform(0.03, 0.08))
        rv_ef = _normal(rng, 0.48, 0.08, 0.25, 0.62)
        hr = _normal(rng, 78, 10, 55, 105)
    elif grp == Group.HCM:
        lv_edvi = _normal(rng, 72, 12, 48, 100)
        lv_ef = float(rng.uniform(0.60, 0.78))
        septal = float(rng.uniform(16.5, 22.0))
        lateral = max(8.0, septal * float(rng.uniform(0.45, 0.75)))
        apex = max(6.0, septal * float(rng.uniform(0.35, 0.6)))
        sphericity = float(rng.uniform(0.45, 0.55))
        long_shortening = float(rng.uniform(0.08, 0.13))
    elif grp == Group.MINF:
        lv_edvi = _normal(rng, 88, 15, 68, 150)
        lv_ef = float(rng.uniform(0.22, 0.395))
        territory = ("LAD", "LCX", "RCA")[int(rng.choice(3, p=[0.5, 0.2, 0.3]))]
        t_centre, t_half = TERRITORIES[territory]
        centre = t_centre + float(rng.uniform(-0.3, 0.3)) * t_half
        width = float(rng.uniform(1.2, 2.0)) * t_half
        transmurality = float(rng.uniform(0.3, 1.0))
        z_low = -0.2 if territory == "LAD" else float(rng.uniform(0.05, 0.3))
        z_range = (z_low, float(rng.uniform(0.65, 0.98)))
        mvo = bool(transmurality > 0.5 and rng.random() < 0.45)
        akinesis = float(rng.uniform(0.0, 0.25))
        long_shortening = float(rng.uniform(0.05, 0.1))
        sphericity = float(rng.uniform(0.58, 0.72))
        wall = _normal(rng, 8.0, 0.8, 6.0, 10.0)
        septal, lateral, apex = wall, wall * 0.92, wall * 0.62
    elif grp == Group.ARV:
        rv_edvi = _normal(rng, 120, 14, 104, 175)
        rv_ef = float(rng.uniform(0.18, 0.39))
        lv_ef = _normal(rng, 0.58, 0.05, 0.48, 0.70)
        lv_edvi = _normal(rng, 72, 10, 55, 95)

    fat = float(np.clip(4.0 + 1.6 * (bmi - 20.0) + rng.normal(0, 3.0) + (4.0 if sex == "F" else 0.0), 2, 45))
    scale = (height / 170.0) ** 0.5 * (bmi / 25.0) ** 0.35
    params = SubjectParams(
        group=grp,
        sex=sex,
        age=round(age, 1),
        height_cm=round(height, 1),
        weight_kg=round(weight, 1),
        heart_rate_bpm=hr,
        lv_edv_ml=lv_edvi * bsa,
        lv_ef=lv_ef,
        rv_edv_ml=rv_edvi * bsa,
        rv_ef=rv_ef,
        wall_septal_mm=septal,
        wall_lateral_mm=lateral,
        wall_apex_mm=apex,
        rv_wall_mm=float(rng.uniform(2.5, 4.5)),
        sphericity=sphericity,
        base_fraction=float(rng.uniform(0.25, 0.4)),
        long_shortening=long_shortening,
        ellipticity=float(rng.uniform(0.0, 0.08)),
        territory=territory,
        infarct_centre_deg=centre,
        infarct_width_deg=width,
        transmurality=transmurality,
        infarct_z=z_range,
        mvo=mvo,
        akinesis=akinesis,
        axis_azimuth_deg=float(rng.normal(-45, 8)),
        axis_elevation_deg=float(rng.normal(32, 6)),
        axis_roll_deg=float(rng.normal(0, 8)),
        heart_offset_mm=(float(rng.normal(-28, 6)), float(rng.normal(18, 5)), float(rng.normal(0, 5))),
        body_lr_mm=float(np.clip(rng.normal(150, 10) * scale, 120, 230)) + 0.6 * fat,
        body_ap_mm=float(np.clip(rng.normal(100, 8) * scale, 80, 170)) + 0.6 * fat,
        fat_mm=fat,
        muscle_mm=float(rng.uniform(8, 15)),
        la_radius_mm=float(rng.uniform(19, 24)) * (1.15 if grp in (Group.DCM, Group.MINF) else 1.0),
        ra_radius_mm=float(rng.uniform(19, 24)) * (1.2 if grp == Group.ARV else 1.0),
        aorta_radius_mm=float(rng.uniform(12, 16)),
        seed=seed,
    )
    return validate_params(params)

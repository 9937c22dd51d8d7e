"""Named constants shared across cmrfm: label ids, sequences, views, physical constants.

Nothing here depends on anything else in the package, so every module may import it.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Label(IntEnum):
    """Internal label convention for every mask in cmrfm.

    Adapters map their source conventions (ACDC: 1 RV, 2 MYO, 3 LV; M&Ms: 1 LV, 2 MYO, 3 RV;
    EMIDEC: 1 LV, 2 MYO, 3 infarct, 4 MVO) onto these ids explicitly.
    """

    BACKGROUND = 0
    LV = 1  # LV blood pool
    MYO = 2  # LV myocardium
    RV = 3  # RV blood pool
    INFARCT = 4  # LGE scar (enhanced myocardium)
    MVO = 5  # microvascular obstruction (no-reflow)
    LA = 6  # left atrium (long axis)
    RA = 7  # right atrium (long axis)


#: Human-readable names written into JSON sidecars and reports.
LABEL_NAMES: dict[int, str] = {
    Label.BACKGROUND: "background",
    Label.LV: "LV",
    Label.MYO: "MYO",
    Label.RV: "RV",
    Label.INFARCT: "infarct",
    Label.MVO: "MVO",
    Label.LA: "LA",
    Label.RA: "RA",
}

#: Cardiac structures that are part of the myocardium for mass and scar computations.
MYOCARDIAL_LABELS: tuple[int, ...] = (Label.MYO, Label.INFARCT, Label.MVO)


class Sequence(StrEnum):
    """MR sequence (contrast) of a series."""

    CINE = "cine"  # balanced SSFP cine
    LGE = "lge"  # late gadolinium enhancement (inversion recovery)
    T1_MAP = "t1map"
    T2_MAP = "t2map"
    OTHER = "other"


class View(StrEnum):
    """Imaging plane of a series."""

    SAX = "sax"
    TWO_CH = "2ch"
    THREE_CH = "3ch"
    FOUR_CH = "4ch"
    OTHER = "other"


class Group(StrEnum):
    """Cardiac disease groups (ACDC). ACDC's file value for ARV is ``RV``."""

    NOR = "NOR"
    MINF = "MINF"
    DCM = "DCM"
    HCM = "HCM"
    ARV = "ARV"


#: Source spellings of disease groups mapped to :class:`Group`.
GROUP_ALIASES: dict[str, Group] = {
    "NOR": Group.NOR,
    "NORMAL": Group.NOR,
    "MINF": Group.MINF,
    "DCM": Group.DCM,
    "HCM": Group.HCM,
    "RV": Group.ARV,
    "ARV": Group.ARV,
}

#: Myocardial tissue density used for LV mass (g/mL).
MYOCARDIAL_DENSITY_G_PER_ML = 1.05

#: Reference in-plane spacing (mm) that learning-time preprocessing resamples to.
REFERENCE_SPACING_MM = 1.5

#: Default network input size (pixels) after crop/pad around the heart.
DEFAULT_IMAGE_SIZE = 128

#: 1 mm³ = 1e-3 mL.
ML_PER_MM3 = 1e-3

#: Ventricular function keys of measurements.json (null when unknown), in report order.
FUNCTION_KEYS: tuple[str, ...] = (
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef_pct",
    "lv_mass_g",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_sv_ml",
    "rv_ef_pct",
)

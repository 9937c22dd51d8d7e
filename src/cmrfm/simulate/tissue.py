"""Tissue classes of the phantom and their MR properties at 1.5 T and 3 T.

Every point of the phantom is one :class:`Tissue`; contrast functions turn a tissue's properties
into a signal, so images and labels come from the same anatomy.

SOURCES (relaxation times, ms; PD relative to water):
    - Stanisz GJ et al. "T1, T2 relaxation and magnetization transfer in tissue at 3T."
      Magn Reson Med 2005;54:507-512 (heart 1.5 T T1 1030/T2 40, 3 T 1471/47; blood 1.5 T
      1441/290, 3 T 1932/275; skeletal muscle 3 T 1412/50).
    - de Bazelaire CMJ et al. "MR imaging relaxation times of abdominal and pelvic tissues measured
      in vivo at 3.0 T." Radiology 2004;230:652-659 (liver 586/46 -> 809/34, subcutaneous fat
      343/58 -> 382/68, muscle 1008/44 -> 1412/50, vertebral marrow 549/49 -> 586/49).
    - Dabir D et al. "Reference values for healthy human myocardium using a T1 mapping methodology:
      results from the International T1 Multicenter CMR Study." JCMR 2014;16:69 (MOLLI myocardium
      950±21 ms at 1.5 T, 1052±23 ms at 3 T).
    - Kellman P, Hansen MS. "T1-mapping in the heart: accuracy and precision." JCMR 2014;16:2
      (MOLLI blood ~1550-1650 ms at 1.5 T; MOLLI underestimates long T1 and fat).
    - von Knobelsdorff-Brenkenhoff F et al. "Myocardial T1 and T2 mapping at 3 T: reference values,
      influencing factors and implications." JCMR 2013;15:53 (T2 map 44.7 ms at 3 T);
      Baeßler B et al. JCMR 2015 (T2 map ~52 ms at 1.5 T).
    - Haaf P et al. "Cardiac T1 mapping and extracellular volume (ECV) in clinical practice: a
      comprehensive review." JCMR 2016;18:89 (normal myocardial ECV 25 ± 4 %, infarct ECV > 50 %).
    - Rohrer M et al. "Comparison of magnetic properties of MRI contrast media solutions at
      different magnetic field strengths." Invest Radiol 2005;40:715-724 (gadobutrol r1 in plasma
      5.2 /mM/s at 1.5 T, 5.0 at 3 T).
    Myocardial T2 uses in-vivo T2-mapping values (~50 ms at 1.5 T, ~45 ms at 3 T) rather than the
    ex-vivo 40 ms, which makes bSSFP blood/myocardium contrast too high.
    Chronic-infarct native T1 (~ +20 % over remote) and T2 (~ +15 %) follow Messroghli DR et al.,
    SCMR/EACVI consensus on parametric mapping, JCMR 2017;19:75.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from cmrfm.constants import Label


class Tissue(IntEnum):
    """Tissue class of a phantom point (uint8 in arrays)."""

    AIR = 0
    LUNG = 1
    FAT = 2
    MUSCLE = 3
    LIVER = 4
    MARROW = 5
    CSF = 6
    VESSEL_BLOOD = 7  # aorta, pulmonary artery, descending aorta
    LV_BLOOD = 8
    RV_BLOOD = 9
    LA_BLOOD = 10
    RA_BLOOD = 11
    MYO = 12
    SCAR = 13
    MVO = 14
    PAPILLARY = 15
    RV_WALL = 16
    ATRIAL_WALL = 17
    PERICARDIAL_FAT = 18
    STOMACH = 19
    MEDIASTINUM = 20


NUM_TISSUES = len(Tissue)

#: Supported main-field strengths (T).
FIELD_STRENGTHS = (1.5, 3.0)


@dataclass(frozen=True)
class TissueProps:
    """Relaxation and density of one tissue at one field strength.

    Attributes:
        t1: Native longitudinal relaxation time (ms).
        t2: Transverse relaxation time (ms).
        pd: Proton density relative to water.
        ecv: Extracellular (gadolinium-accessible) volume fraction; blood uses its plasma fraction.
        map_t1: Apparent native T1 a MOLLI map shows (ms).
        map_t2: Value a T2 map (T2-prepared bSSFP) shows (ms).
    """

    t1: float
    t2: float
    pd: float
    ecv: float
    map_t1: float
    map_t2: float


_BLOOD_15 = TissueProps(1441, 290, 0.95, 0.58, 1580, 220)
_BLOOD_30 = TissueProps(1932, 275, 0.95, 0.58, 1870, 190)
_MYO_15 = TissueProps(1030, 50, 0.80, 0.25, 950, 52)
_MYO_30 = TissueProps(1471, 45, 0.80, 0.25, 1052, 45)

#: Properties per field strength and tissue.
TISSUE_PROPERTIES: dict[float, dict[Tissue, TissueProps]] = {
    1.5: {
        Tissue.AIR: TissueProps(1.0, 1.0, 0.0, 0.0, 0.0, 0.0),
        Tissue.LUNG: TissueProps(1200, 35, 0.12, 0.40, 1200, 40),
        Tissue.FAT: TissueProps(343, 58, 0.90, 0.10, 280, 65),
        Tissue.MUSCLE: TissueProps(1008, 44, 0.75, 0.12, 1010, 42),
        Tissue.LIVER: TissueProps(586, 46, 0.75, 0.28, 580, 46),
        Tissue.MARROW: TissueProps(549, 49, 0.80, 0.20, 550, 49),
        Tissue.CSF: TissueProps(4000, 2000, 1.0, 1.0, 3500, 1000),
        Tissue.VESSEL_BLOOD: _BLOOD_15,
        Tissue.LV_BLOOD: _BLOOD_15,
        Tissue.RV_BLOOD: _BLOOD_15,
        Tissue.LA_BLOOD: _BLOOD_15,
        Tissue.RA_BLOOD: _BLOOD_15,
        Tissue.MYO: _MYO_15,
        Tissue.SCAR: TissueProps(1240, 46, 0.80, 0.60, 1150, 60),
        Tissue.MVO: TissueProps(1100, 38, 0.80, 0.05, 1050, 42),
        Tissue.PAPILLARY: _MYO_15,
        Tissue.RV_WALL: _MYO_15,
        Tissue.ATRIAL_WALL: _MYO_15,
        Tissue.PERICARDIAL_FAT: TissueProps(343, 58, 0.90, 0.10, 280, 65),
        Tissue.STOMACH: TissueProps(1800, 150, 0.60, 0.50, 1700, 120),
        Tissue.MEDIASTINUM: TissueProps(450, 55, 0.75, 0.15, 400, 60),
    },
    3.0: {
        Tissue.AIR: TissueProps(1.0, 1.0, 0.0, 0.0, 0.0, 0.0),
        Tissue.LUNG: TissueProps(1300, 30, 0.12, 0.40, 1300, 35),
        Tissue.FAT: TissueProps(382, 68, 0.90, 0.10, 300, 70),
        Tissue.MUSCLE: TissueProps(1412, 50, 0.75, 0.12, 1150, 40),
        Tissue.LIVER: TissueProps(809, 34, 0.75, 0.28, 760, 36),
        Tissue.MARROW: TissueProps(586, 49, 0.80, 0.20, 590, 49),
        Tissue.CSF: TissueProps(4160, 1800, 1.0, 1.0, 3700, 1000),
        Tissue.VESSEL_BLOOD: _BLOOD_30,
        Tissue.LV_BLOOD: _BLOOD_30,
        Tissue.RV_BLOOD: _BLOOD_30,
        Tissue.LA_BLOOD: _BLOOD_30,
        Tissue.RA_BLOOD: _BLOOD_30,
        Tissue.MYO: _MYO_30,
        Tissue.SCAR: TissueProps(1770, 54, 0.80, 0.60, 1260, 52),
        Tissue.MVO: TissueProps(1560, 42, 0.80, 0.05, 1150, 38),
        Tissue.PAPILLARY: _MYO_30,
        Tissue.RV_WALL: _MYO_30,
        Tissue.ATRIAL_WALL: _MYO_30,
        Tissue.PERICARDIAL_FAT: TissueProps(382, 68, 0.90, 0.10, 300, 70),
        Tissue.STOMACH: TissueProps(2200, 130, 0.60, 0.50, 2000, 110),
        Tissue.MEDIASTINUM: TissueProps(550, 60, 0.75, 0.15, 450, 60),
    },
}

#: Tissues that are (LV) blood for contrast purposes (bSSFP inflow enhancement).
BLOOD_TISSUES = (Tissue.VESSEL_BLOOD, Tissue.LV_BLOOD, Tissue.RV_BLOOD, Tissue.LA_BLOOD, Tissue.RA_BLOOD)

#: Tissues inside the body that carry no signal-bearing protons worth coil shading (air).
NO_SIGNAL_TISSUES = (Tissue.AIR,)


def property_arrays(field_strength_t: float) -> dict[str, np.ndarray]:
    """Per-tissue property vectors ``(NUM_TISSUES,)`` for one field strength.

    Raises:
        KeyError: Never for a validated config; callers check ``FIELD_STRENGTHS`` first.
    """
    table = TISSUE_PROPERTIES[float(field_strength_t)]
    names = ("t1", "t2", "pd", "ecv", "map_t1", "map_t2")
    return {
        name: np.array([getattr(table[Tissue(i)], name) for i in range(NUM_TISSUES)], dtype=np.float64)
        for name in names
    }


def label_lookup(view_is_lax: bool, lge: bool) -> np.ndarray:
    """Tissue → internal :class:`~cmrfm.constants.Label` table ``(NUM_TISSUES,)`` uint8.

    Args:
        view_is_lax: Long-axis views also label LA and RA.
        lge: LGE series label scar and MVO separately; other sequences count them as myocardium.
    """
    table = np.zeros(NUM_TISSUES, dtype=np.uint8)
    table[Tissue.LV_BLOOD] = Label.LV
    table[Tissue.PAPILLARY] = Label.LV  # ACDC convention: papillary muscles belong to the cavity
    table[Tissue.MYO] = Label.MYO
    table[Tissue.SCAR] = Label.INFARCT if lge else Label.MYO
    table[Tissue.MVO] = Label.MVO if lge else Label.MYO
    table[Tissue.RV_BLOOD] = Label.RV
    if view_is_lax:
        table[Tissue.LA_BLOOD] = Label.LA
        table[Tissue.RA_BLOOD] = Label.RA
    return table

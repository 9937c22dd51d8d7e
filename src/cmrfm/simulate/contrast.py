"""Signal equations: tissue properties → pixel values for bSSFP cine, LGE, T1 and T2 maps.

Each sequence yields a :class:`SignalTable`: a value per tissue class (channel 0) and, for maps, the
noise standard deviation per tissue (channel 1). Rendering looks the table up per fine sample and
integrates, so partial volume mixes signals, not labels.

SOURCES:
    - bSSFP steady state: Scheffler K, Lehnhardt S. "Principles and applications of balanced SSFP
      techniques." Eur Radiol 2003;13:2409-2418 (S = M0 sinα (1-E1) / (1 - (E1-E2)cosα - E1E2) · E2^½).
    - LGE: Kellman P, Arai AE. "Cardiac imaging techniques for physicians: late enhancement."
      JMRI 2012;36:529-542 (TI chosen to null normal myocardium; PSIR); Kim RJ et al. NEJM 2000.
    - Imaging parameters: Kramer CM et al. "Standardized cardiovascular magnetic resonance imaging
      (CMR) protocols: 2020 update." JCMR 2020;22:17 (bSSFP flip 40-80°, TR ~3 ms; LGE 10-20 min
      after 0.1-0.2 mmol/kg gadolinium, every other heartbeat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cmrfm.constants import Sequence
from cmrfm.simulate.tissue import BLOOD_TISSUES, NUM_TISSUES, Tissue, property_arrays

#: Gadobutrol r1 relaxivity in plasma (/mM/s) per field strength (Rohrer et al. 2005).
R1_RELAXIVITY = {1.5: 5.2, 3.0: 5.0}
#: bSSFP repetition time (ms) per field strength.
BSSFP_TR_MS = {1.5: 3.0, 3.0: 3.2}
#: Net effect of flow (inflow enhancement vs. dephasing) on bSSFP blood signal, and the extra RV
#: factor (slower flow, trabeculae): empirical ranges that bring blood/myocardium contrast and the
#: RV/LV blood ratio near ACDC's (benchmarks/realism_vs_acdc.py), not physics.
BLOOD_FLOW_FACTOR = (0.85, 1.05)
RV_BLOOD_FACTOR = (0.75, 0.95)
#: Noise SD (ms) of map values where there is no tissue signal (air).
MAP_AIR_NOISE_MS = {Sequence.T1_MAP: 700.0, Sequence.T2_MAP: 60.0}


@dataclass
class SignalTable:
    """Per-tissue signal of one sequence.

    Attributes:
        sequence: The sequence.
        values: ``(C, NUM_TISSUES)`` float32; channel 0 is the image value, channel 1 (maps) the noise SD.
        reference: Signal that defines SNR (myocardium for cine, blood pool for LGE).
        is_map: Quantitative map (values in ms, no coil shading, Gaussian noise).
        params: Sequence parameters for the sidecar.
    """

    sequence: Sequence
    values: np.ndarray
    reference: float
    is_map: bool = False
    params: dict = field(default_factory=dict)


def bssfp(field_strength: float, rng: np.random.Generator) -> SignalTable:
    """Balanced SSFP cine signal with a random flip angle and blood inflow enhancement."""
    props = property_arrays(field_strength)
    flip = math.radians(float(rng.uniform(45, 70)))
    tr = BSSFP_TR_MS[field_strength]
    te = tr / 2
    e1, e2 = np.exp(-tr / props["t1"]), np.exp(-tr / props["t2"])
    signal = props["pd"] * math.sin(flip) * (1 - e1) / (1 - (e1 - e2) * math.cos(flip) - e1 * e2)
    signal *= np.exp(-te / props["t2"])
    flow = float(rng.uniform(*BLOOD_FLOW_FACTOR))
    signal[list(BLOOD_TISSUES)] *= flow
    signal[Tissue.RV_BLOOD] *= float(rng.uniform(*RV_BLOOD_FACTOR))
    signal[Tissue.AIR] = 0.0
    return SignalTable(
        Sequence.CINE,
        signal[None].astype(np.float32),
        float(signal[Tissue.MYO]),
        params={
            "flip_deg": round(math.degrees(flip), 1),
            "tr_ms": tr,
            "te_ms": te,
            "blood_flow_factor": round(flow, 3),
        },
    )


def lge(field_strength: float, rng: np.random.Generator, rr_ms: float) -> SignalTable:
    """Inversion-recovery LGE with TI nulling normal myocardium (PSIR-like, negatives clipped)."""
    props = property_arrays(field_strength)
    plasma_mm = float(rng.uniform(0.7, 1.2))
    r1 = 1000.0 / props["t1"] + R1_RELAXIVITY[field_strength] * plasma_mm * props["ecv"]
    t1_post = 1000.0 / r1
    trr = 2.0 * rr_ms
    t1_myo = t1_post[Tissue.MYO]
    ti_null = t1_myo * math.log(2.0 / (1.0 + math.exp(-trr / t1_myo)))
    ti = ti_null * float(rng.uniform(0.97, 1.08))
    signal = props["pd"] * (1 - 2 * np.exp(-ti / t1_post) + np.exp(-trr / t1_post))
    signal = np.maximum(signal, 0.0) + 0.02 * props["pd"]
    signal[Tissue.AIR] = 0.0
    return SignalTable(
        Sequence.LGE,
        signal[None].astype(np.float32),
        float(signal[Tissue.LV_BLOOD]),
        params={
            "ti_ms": round(ti, 1),
            "plasma_gd_mM": round(plasma_mm, 3),
            "t1_post_myo_ms": round(float(t1_myo), 1),
            "reconstruction": "psir_clipped",
        },
    )


def parametric_map(sequence: Sequence, field_strength: float, noise: float) -> SignalTable:
    """T1 (MOLLI-like apparent native T1) or T2 map in ms with per-tissue noise SD."""
    props = property_arrays(field_strength)
    values = props["map_t1" if sequence == Sequence.T1_MAP else "map_t2"]
    sd = noise * values / np.maximum(props["pd"], 0.1)
    sd[Tissue.AIR] = MAP_AIR_NOISE_MS[sequence]
    table = np.stack([values, sd]).astype(np.float32)  # (2, NUM_TISSUES)
    assert table.shape == (2, NUM_TISSUES)
    return SignalTable(sequence, table, float(values[Tissue.MYO]), is_map=True, params={"units": "ms"})


def signal_table(
    sequence: Sequence, field_strength: float, rng: np.random.Generator, rr_ms: float, map_noise: float
) -> SignalTable:
    """The :class:`SignalTable` of ``sequence``."""
    sequence = Sequence(sequence)
    if sequence == Sequence.CINE:
        return bssfp(field_strength, rng)
    if sequence == Sequence.LGE:
        return lge(field_strength, rng, rr_ms)
    return parametric_map(sequence, field_strength, map_noise)

"""The 3D+t phantom: an implicit-shape heart in its own frame, placed in a body.

Heart frame (mm): origin at the LV endocardial apex, ``z`` along the LV long axis towards the base,
``x`` towards the septum/RV, ``y`` anterior. Angles ``phi`` are measured from ``x`` towards ``y``:
0 = septum, 90 = anterior, 180 = lateral, 270 = inferior.

The LV cavity at time ``t`` is the truncated ellipsoid ``r²/a(phi)² + (z - L)²/L² <= 1, z <= base``
with an angle-dependent radius; the epicardium is the same form with ``a + k·w(phi)`` and
``L + k·w_apex``. Because both are "radial profile × ellipsoid", the cavity and myocardial volumes
have closed forms (:meth:`HeartModel.lv_volume_ml`, :meth:`HeartModel.myo_volume_ml`); ``k(t)``
thickens the wall so myocardial volume is conserved. The RV is an ellipsoid wrapped around the
septum (minus the LV), calibrated numerically to the sampled RV volume and EF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from cmrfm.constants import ML_PER_MM3
from cmrfm.simulate.motion import contraction
from cmrfm.simulate.params import SubjectParams, validate_params
from cmrfm.simulate.tissue import Tissue

#: Angular bins of the LV radial profiles.
N_BINS = 360
#: Angles (rad) of the bin centres, in [-pi, pi).
BIN_PHI = -np.pi + (np.arange(N_BINS) + 0.5) * (2 * np.pi / N_BINS)
#: Angle of the RV centre, LA, RA, aortic root and pulmonary trunk around the LV axis (deg).
RV_ANGLE_DEG = 15.0
LA_ANGLE_DEG = 225.0
RA_ANGLE_DEG = -10.0
AORTA_ANGLE_DEG = 45.0
PA_ANGLE_DEG = 75.0
#: Papillary muscles (anterolateral, posteromedial) angles (deg).
PAPILLARY_ANGLES_DEG = (150.0, 235.0)
PAPILLARY_RADIUS_MM = 3.5
#: RV ellipsoid semi-axes (radial, tangential) before calibration, in units of the LV epicardial radius.
RV_RADIAL_AXIS = 0.8
RV_TANGENTIAL_AXIS = 1.7
#: How far the RV ellipsoid reaches into the LV (fraction of the epicardial radius) on its septal side.
RV_SEPTAL_REACH = 0.45
#: Tricuspid plane below the mitral plane (mm); RV apex height as a fraction of the LV base height.
TRICUSPID_DROP_MM = 6.0
RV_APEX_FRACTION = 0.28
#: Pericardial fat layer thickness (mm).
PERICARDIAL_FAT_MM = 2.5
#: How far below the mitral plane the aortic root and pulmonary trunk may reach (mm).
VESSEL_BELOW_MITRAL_MM = 6.0
ATRIAL_WALL_MM = 2.0
#: Grid steps (mm) for RV calibration and for the reported numeric volumes.
COARSE_STEP_MM = 2.0
FINE_STEP_MM = 1.0
#: Heart states kept per model (one per distinct cycle fraction).
STATE_CACHE_SIZE = 256
#: RV calibration: bisection steps and the bracket of the RV size scale.
RV_CALIBRATION_STEPS = 12
RV_SCALE_RANGE = (0.7, 3.0)


def _g(semi_axis: float, height: float) -> float:
    """∫ (1 - z²/L²) dz from -L to h (length-weighted area factor of a truncated ellipsoid)."""
    h = min(height, semi_axis)
    return (h + semi_axis) - (h**3 + semi_axis**3) / (3 * semi_axis**2)


def _unit(angle_deg: float) -> np.ndarray:
    rad = math.radians(angle_deg)
    return np.array([math.cos(rad), math.sin(rad), 0.0])


def _wrap_deg(angle: np.ndarray) -> np.ndarray:
    return (angle + 180.0) % 360.0 - 180.0


def angle_bins(phi: np.ndarray) -> np.ndarray:
    """Bin index of angles ``phi`` (rad, from arctan2)."""
    idx = ((phi + np.pi) * (N_BINS / (2 * np.pi))).astype(np.int32)
    return np.minimum(idx, N_BINS - 1)


@dataclass
class HeartCoords:
    """Heart-frame coordinates of a set of points, precomputed once per plane."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    r2: np.ndarray
    bins: np.ndarray
    phi_deg: np.ndarray

    @classmethod
    def from_points(cls, pts: np.ndarray) -> HeartCoords:
        """From heart-frame points ``(N, 3)``."""
        x, y, z = (pts[:, i].astype(np.float32) for i in range(3))
        phi = np.arctan2(y, x)
        return cls(x, y, z, x * x + y * y, angle_bins(phi), np.degrees(phi).astype(np.float32))


@dataclass
class HeartState:
    """Every shape parameter of the heart at one instant (heart frame, mm)."""

    c: float
    L: float  # cavity half long axis
    Lo: float  # epicardial half long axis
    zc: float  # cavity ellipsoid centre (z)
    z_base: float  # mitral plane (z)
    a: np.ndarray  # cavity radius profile (N_BINS,)
    ao: np.ndarray  # epicardial radius profile (N_BINS,)
    rv_centre: np.ndarray
    rv_axes: np.ndarray  # (A radial, B tangential, C long)
    z_tricuspid: float
    la_centre: np.ndarray
    la_axes: np.ndarray  # (horizontal, long)
    ra_centre: np.ndarray
    ra_axes: np.ndarray
    aorta: tuple[np.ndarray, np.ndarray, float]
    pa: tuple[np.ndarray, np.ndarray, float]
    papillary: list[tuple[float, float, float, float, float]]  # x, y, z_low, z_high, radius


class HeartModel:
    """A subject's heart: ED geometry, contraction solved to the sampled EFs, shapes at any time.

    Args:
        params: Subject parameters.
        es_fraction: End-systole as a fraction of the cycle.
    """

    def __init__(self, params: SubjectParams, es_fraction: float = 0.35) -> None:
        self.p = validate_params(params)
        self.es_fraction = es_fraction
        p = self.p
        f = p.base_fraction
        g_unit = (1 + f) - (1 + f**3) / 3
        volume = p.lv_edv_ml / ML_PER_MM3
        self.L_ed = (volume / (math.pi * p.sphericity**2 * g_unit)) ** (1 / 3)
        shape = 1.0 + p.ellipticity * np.cos(2 * (BIN_PHI - math.radians(100.0)))
        shape /= np.sqrt(np.mean(shape**2))
        self.a_ed = p.sphericity * self.L_ed * shape
        septal_weight = (0.5 * (1 + np.cos(BIN_PHI))) ** 1.5
        self.w = p.wall_lateral_mm + (p.wall_septal_mm - p.wall_lateral_mm) * septal_weight
        self.w_apex = p.wall_apex_mm
        self.motion = np.ones(N_BINS)
        if p.territory:
            delta = _wrap_deg(np.degrees(BIN_PHI) - p.infarct_centre_deg)
            window = np.clip(1.0 - (np.abs(delta) / (0.6 * p.infarct_width_deg + 10.0)) ** 4, 0.0, 1.0)
            self.motion = 1.0 - (1.0 - p.akinesis) * window
        self.radial = self._solve_radial()
        self.myo_volume_ed = self._myo_volume(self._cavity(0.0), 1.0)
        self.R_epi = float(np.mean(self.a_ed + self.w))
        self._rv_scale = 1.0
        self._rv_radial = 0.0
        self._states: dict[tuple[float, float, float], HeartState] = {}
        self._calibrate_rv()

    # ----- LV -----------------------------------------------------------------------------------
    def _solve_radial(self) -> float:
        p = self.p
        target = (1 - p.lv_ef) / (1 - p.long_shortening)
        a2, m = self.a_ed**2, self.motion
        qa, qb, qc = np.mean(a2 * m * m), np.mean(a2 * m), np.mean(a2)
        disc = qb * qb - qa * (qc - target * qc)
        radial = (qb - math.sqrt(max(disc, 0.0))) / qa
        return float(np.clip(radial, 0.0, 0.85))

    def _cavity(self, c: float) -> tuple[np.ndarray, float]:
        a = self.a_ed * (1.0 - self.radial * self.motion * c)
        L = self.L_ed * (1.0 - self.p.long_shortening * c)
        return a, L

    def _myo_volume(self, cavity: tuple[np.ndarray, float], k: float) -> float:
        a, L = cavity
        h = self.p.base_fraction * L
        Lo = L + k * self.w_apex
        return math.pi * (np.mean((a + k * self.w) ** 2) * _g(Lo, h) - np.mean(a**2) * _g(L, h))

    def _thickening(self, c: float) -> float:
        cavity = self._cavity(c)
        return brentq(lambda k: self._myo_volume(cavity, k) - self.myo_volume_ed, 0.2, 8.0, xtol=1e-6)

    def lv_volume_ml(self, t: float) -> float:
        """Analytic LV cavity volume (mL) at cycle fraction ``t``."""
        a, L = self._cavity(float(contraction(t, self.es_fraction)))
        return math.pi * float(np.mean(a**2)) * _g(L, self.p.base_fraction * L) * ML_PER_MM3

    def myo_volume_ml(self) -> float:
        """Analytic LV myocardial volume (mL), constant over the cycle."""
        return self.myo_volume_ed * ML_PER_MM3

    # ----- state ----------------------------------------------------------------------------------
    def state(self, t: float) -> HeartState:
        """Shape parameters at cycle fraction ``t`` (cached per ``t``)."""
        key = (round(float(t), 9), self._rv_scale, self._rv_radial)
        cached = self._states.get(key)
        if cached is None:
            cached = self._state(float(t))
            if len(self._states) < STATE_CACHE_SIZE:
                self._states[key] = cached
        return cached

    def _state(self, t: float) -> HeartState:
        p = self.p
        c = float(contraction(t, self.es_fraction))
        a, L = self._cavity(c)
        k = self._thickening(c) if c > 0 else 1.0
        zc = L
        z_base = zc + p.base_fraction * L
        ao = a + k * self.w
        Lo = L + k * self.w_apex
        rv_centre, rv_axes, z_tri = self._rv_shape(c, z_base, self._rv_scale, self._rv_radial)
        r_mv = float(np.mean(a)) * math.sqrt(max(1 - p.base_fraction**2, 0.0))
        la_h = max(p.la_radius_mm, 0.95 * r_mv + 3.0) * (1 + 0.12 * c)
        la_v = 0.9 * p.la_radius_mm * (1 + 0.2 * c)
        la_centre = 6.0 * _unit(LA_ANGLE_DEG) + np.array([0, 0, z_base + 0.35 * la_v])
        ra_h = p.ra_radius_mm * (1 + 0.1 * c)
        ra_v = 1.05 * p.ra_radius_mm * (1 + 0.15 * c)
        ra_dist = 0.5 * (self.R_epi + rv_centre[0] / _unit(RV_ANGLE_DEG)[0] + rv_axes[0])
        ra_centre = ra_dist * _unit(RA_ANGLE_DEG) + np.array([0, 0, z_tri + 0.45 * ra_v])
        ao_root = 0.45 * float(np.mean(a)) * _unit(AORTA_ANGLE_DEG) + np.array([0, 0, z_base - 4.0])
        ao_dir = 0.3 * _unit(AORTA_ANGLE_DEG) + np.array([0, 0, 1.0])
        ao_end = ao_root + 60.0 * ao_dir / np.linalg.norm(ao_dir)
        pa_root = (self.R_epi + 10.0) * _unit(PA_ANGLE_DEG) + np.array([0, 0, z_tri + 2.0])
        pa_dir = np.array([0, 0, 1.0]) + 0.45 * _unit(PA_ANGLE_DEG + 40.0)
        pa_end = pa_root + 45.0 * pa_dir / np.linalg.norm(pa_dir)
        papillary = []
        for ang in PAPILLARY_ANGLES_DEG:
            idx = int(angle_bins(np.array([math.radians(_wrap_deg(np.array(ang)))]))[0])
            pos = 0.62 * a[idx] * _unit(ang)
            papillary.append(
                (float(pos[0]), float(pos[1]), 0.3 * L, 0.95 * L, PAPILLARY_RADIUS_MM * (1 + 0.4 * c))
            )
        return HeartState(
            c=c,
            L=L,
            Lo=Lo,
            zc=zc,
            z_base=z_base,
            a=a,
            ao=ao,
            rv_centre=rv_centre,
            rv_axes=rv_axes,
            z_tricuspid=z_tri,
            la_centre=la_centre,
            la_axes=np.array([la_h, la_v]),
            ra_centre=ra_centre,
            ra_axes=np.array([ra_h, ra_v]),
            aorta=(ao_root, ao_end, p.aorta_radius_mm),
            pa=(pa_root, pa_end, 0.9 * p.aorta_radius_mm),
            papillary=papillary,
        )

    # ----- RV -------------------------------------------------------------------------------------
    def _rv_shape(
        self, c: float, z_base: float, scale: float, radial: float
    ) -> tuple[np.ndarray, np.ndarray, float]:
        z_base_ed = self.L_ed * (1 + self.p.base_fraction)
        z_tri = z_base - TRICUSPID_DROP_MM
        z_apex = RV_APEX_FRACTION * z_base_ed
        C = (z_tri - z_apex) / 1.3
        A = RV_RADIAL_AXIS * self.R_epi * scale * (1 - radial * c)
        B = RV_TANGENTIAL_AXIS * self.R_epi * scale * (1 - 0.6 * radial * c)
        dist = A - RV_SEPTAL_REACH * self.R_epi
        centre = dist * _unit(RV_ANGLE_DEG) + np.array([0, 0, z_tri - 0.3 * C])
        return centre, np.array([A, B, C]), z_tri

    def _grid(self, step: float, state: HeartState) -> HeartCoords:
        A, B, _ = state.rv_axes
        reach = max(A, B) + self.p.rv_wall_mm + 2
        cx, cy = state.rv_centre[:2]
        ext = self.R_epi + 15
        xs = np.arange(min(cx - reach, -ext), max(cx + reach, ext), step) + step / 2
        ys = np.arange(min(cy - reach, -ext), max(cy + reach, ext), step) + step / 2
        zs = np.arange(-self.w_apex * 3 - 2, state.z_base + 2, step) + step / 2
        grid = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)  # (N, 3)
        return HeartCoords.from_points(grid)

    def _rv_volume(self, t: float, step: float, scale: float, radial: float) -> float:
        """RV cavity volume (mL) with trial calibration ``scale`` and ``radial`` contraction."""
        self._rv_scale, self._rv_radial = scale, radial
        return self.rv_volume_ml(t, step)

    def rv_volume_ml(self, t: float, step: float = FINE_STEP_MM) -> float:
        """RV cavity volume (mL) at cycle fraction ``t`` by grid integration over the RV only.

        Same shapes as :meth:`classify` (RV ellipsoid below the tricuspid plane, outside the LV).
        """
        s = self.state(t)
        A, B, C = s.rv_axes
        reach = max(A, B)
        cx, cy, cz = s.rv_centre
        xs = np.arange(cx - reach, cx + reach, step) + step / 2
        ys = np.arange(cy - reach, cy + reach, step) + step / 2
        zs = np.arange(cz - C, s.z_tricuspid, step) + step / 2
        grid = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)  # (N, 3)
        hc = HeartCoords.from_points(grid)
        lv_outer = self._lv_outer(hc, s)
        rv_cav = ~lv_outer & self._rv_inside(hc, s)
        return float(np.count_nonzero(rv_cav)) * step**3 * ML_PER_MM3

    def _lv_outer(self, hc: HeartCoords, s: HeartState) -> np.ndarray:
        """Points inside the LV epicardium (below the mitral plane)."""
        dz = hc.z - np.float32(s.zc)
        inv_ao2 = (1.0 / s.ao**2).astype(np.float32)[hc.bins]
        return (hc.r2 * inv_ao2 + dz * dz * np.float32(1.0 / s.Lo**2) <= 1.0) & (hc.z <= s.z_base)

    def _rv_inside(self, hc: HeartCoords, s: HeartState) -> np.ndarray:
        """Points inside the RV ellipsoid and below the tricuspid plane."""
        e_r = _unit(RV_ANGLE_DEG)
        A, B, C = s.rv_axes
        vx, vy, vz = hc.x - s.rv_centre[0], hc.y - s.rv_centre[1], hc.z - s.rv_centre[2]
        u_r = vx * e_r[0] + vy * e_r[1]
        u_t = -vx * e_r[1] + vy * e_r[0]
        return (hc.z <= s.z_tricuspid) & ((u_r / A) ** 2 + (u_t / B) ** 2 + (vz / C) ** 2 <= 1.0)

    def _calibrate_rv(self) -> None:
        p = self.p
        lo, hi = RV_SCALE_RANGE
        for _ in range(RV_CALIBRATION_STEPS):
            mid = math.sqrt(lo * hi)
            if self._rv_volume(0.0, COARSE_STEP_MM, mid, 0.0) < p.rv_edv_ml:
                lo = mid
            else:
                hi = mid
        scale = math.sqrt(lo * hi)
        ed = self._rv_volume(0.0, COARSE_STEP_MM, scale, 0.0)
        target = (1 - p.rv_ef) * ed
        t_es = self.es_fraction
        lo, hi = 0.0, 0.9
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            if self._rv_volume(t_es, COARSE_STEP_MM, scale, mid) > target:
                lo = mid
            else:
                hi = mid
        self._rv_scale, self._rv_radial = scale, 0.5 * (lo + hi)

    def numeric_volume_ml(self, t: float, tissues: tuple[int, ...], step: float = FINE_STEP_MM) -> float:
        """Volume (mL) of ``tissues`` at cycle fraction ``t`` by dense grid integration."""
        state = self.state(t)
        classes = self.classify(self._grid(step, state), state)
        return float(np.count_nonzero(np.isin(classes, tissues))) * step**3 * ML_PER_MM3

    # ----- classification -------------------------------------------------------------------------
    def classify(self, hc: HeartCoords, s: HeartState) -> np.ndarray:
        """Tissue class (uint8, 0 = not heart) of heart-frame points at state ``s``."""
        p = self.p
        x, y, z, r2, bins = hc.x, hc.y, hc.z, hc.r2, hc.bins
        out = np.zeros(x.shape, dtype=np.uint8)
        dz = z - np.float32(s.zc)
        below_base = z <= s.z_base
        inv_a2 = (1.0 / s.a**2).astype(np.float32)[bins]
        inv_ao2 = (1.0 / s.ao**2).astype(np.float32)[bins]
        rho_c = r2 * inv_a2 + dz * dz * np.float32(1.0 / s.L**2)
        rho_o = r2 * inv_ao2 + dz * dz * np.float32(1.0 / s.Lo**2)
        cavity = (rho_c <= 1.0) & below_base
        lv_outer = (rho_o <= 1.0) & below_base
        myo = lv_outer & ~cavity
        out[cavity] = Tissue.LV_BLOOD
        for px, py, z_lo, z_hi, rad in s.papillary:
            pm = cavity & ((x - px) ** 2 + (y - py) ** 2 <= rad * rad) & (z >= z_lo) & (z <= z_hi)
            out[pm] = Tissue.PAPILLARY
        out[myo] = Tissue.MYO
        if p.territory and p.transmurality > 0:
            self._scar(out, myo, hc, s, rho_c, rho_o)
        # RV: ellipsoid wrapped around the septum, minus the LV.
        e_r = _unit(RV_ANGLE_DEG)
        A, B, C = s.rv_axes
        vx, vy, vz = x - s.rv_centre[0], y - s.rv_centre[1], z - s.rv_centre[2]
        u_r = vx * e_r[0] + vy * e_r[1]
        u_t = -vx * e_r[1] + vy * e_r[0]
        below_tri = z <= s.z_tricuspid
        free = (out == 0) & ~lv_outer
        rv_cav = free & below_tri & ((u_r / A) ** 2 + (u_t / B) ** 2 + (vz / C) ** 2 <= 1.0)
        out[rv_cav] = Tissue.RV_BLOOD
        w = p.rv_wall_mm
        rv_outer = below_tri & ((u_r / (A + w)) ** 2 + (u_t / (B + w)) ** 2 + (vz / (C + w)) ** 2 <= 1.0)
        out[(out == 0) & rv_outer & ~lv_outer] = Tissue.RV_WALL
        # Vessels and atria lie above the valve planes: evaluate them on that subset only.
        vessel_floor = s.z_base - VESSEL_BELOW_MITRAL_MM
        upper = np.flatnonzero((out == 0) & (z > min(vessel_floor, s.z_tricuspid)))
        if upper.size:
            out[upper] = self._above_valves(x[upper], y[upper], z[upper], s, vessel_floor)
        fat = PERICARDIAL_FAT_MM
        inv_af2 = (1.0 / (s.ao + fat) ** 2).astype(np.float32)[bins]
        lv_fat = (r2 * inv_af2 + dz * dz / (s.Lo + fat) ** 2 <= 1.0) & (z <= s.z_base + fat)
        rv_fat = (z <= s.z_tricuspid + fat) & (
            (u_r / (A + w + fat)) ** 2 + (u_t / (B + w + fat)) ** 2 + (vz / (C + w + fat)) ** 2 <= 1.0
        )
        out[(out == 0) & (lv_fat | rv_fat)] = Tissue.PERICARDIAL_FAT
        return out

    def _above_valves(self, x, y, z, s: HeartState, vessel_floor: float) -> np.ndarray:
        """Classes of points above the valve planes: aorta, pulmonary trunk, LA, RA, atrial walls."""
        sub = np.zeros(x.shape, dtype=np.uint8)
        for p0, p1, rad in (s.aorta, s.pa):
            sub[(sub == 0) & (z > vessel_floor) & _capsule(x, y, z, p0, p1, rad)] = Tissue.VESSEL_BLOOD
        above_mv, above_tv = z > s.z_base, z > s.z_tricuspid
        sub[(sub == 0) & above_mv & (_ellipsoid_q(x, y, z, s.la_centre, s.la_axes) <= 1.0)] = Tissue.LA_BLOOD
        sub[(sub == 0) & above_tv & (_ellipsoid_q(x, y, z, s.ra_centre, s.ra_axes) <= 1.0)] = Tissue.RA_BLOOD
        walls = (sub == 0) & (
            (above_mv & (_ellipsoid_q(x, y, z, s.la_centre, s.la_axes + ATRIAL_WALL_MM) <= 1.0))
            | (above_tv & (_ellipsoid_q(x, y, z, s.ra_centre, s.ra_axes + ATRIAL_WALL_MM) <= 1.0))
        )
        sub[walls] = Tissue.ATRIAL_WALL
        return sub

    def _scar(
        self,
        out: np.ndarray,
        myo: np.ndarray,
        hc: HeartCoords,
        s: HeartState,
        rho_c: np.ndarray,
        rho_o: np.ndarray,
    ) -> None:
        p = self.p
        half = 0.5 * p.infarct_width_deg
        delta = _wrap_deg(hc.phi_deg[myo] - p.infarct_centre_deg)
        zfrac = hc.z[myo] / s.z_base
        inside = (np.abs(delta) <= half) & (zfrac >= p.infarct_z[0]) & (zfrac <= p.infarct_z[1])
        taper = np.sqrt(np.clip(1.0 - (delta / half) ** 2, 0.0, 1.0))
        ec = np.sqrt(rho_c[myo]) - 1.0
        eo = 1.0 - np.sqrt(rho_o[myo])
        depth = ec / np.maximum(ec + eo, 1e-6)
        scar = inside & (depth <= p.transmurality * (0.35 + 0.65 * taper))
        labels = np.where(scar, np.uint8(Tissue.SCAR), np.uint8(Tissue.MYO))
        if p.mvo:
            zmid = 0.5 * (p.infarct_z[0] + p.infarct_z[1])
            zhalf = 0.3 * (p.infarct_z[1] - p.infarct_z[0])
            core = scar & (np.abs(delta) <= 0.4 * half) & (np.abs(zfrac - zmid) <= zhalf)
            core &= depth <= 0.45 * p.transmurality
            labels[core] = Tissue.MVO
        out[myo] = labels

    # ----- geometry helpers -----------------------------------------------------------------------
    def endo_radius(self, s: HeartState, z: float, phi_deg: np.ndarray) -> np.ndarray:
        """Endocardial radius at height ``z`` and angles ``phi_deg`` (0 where outside)."""
        bins = angle_bins(np.radians(_wrap_deg(np.asarray(phi_deg, dtype=np.float64))))
        q = 1.0 - ((z - s.zc) / s.L) ** 2
        return s.a[bins] * math.sqrt(max(q, 0.0))

    def epi_radius(self, s: HeartState, z: float, phi_deg: np.ndarray) -> np.ndarray:
        """Epicardial radius at height ``z`` and angles ``phi_deg`` (0 where outside)."""
        bins = angle_bins(np.radians(_wrap_deg(np.asarray(phi_deg, dtype=np.float64))))
        q = 1.0 - ((z - s.zc) / s.Lo) ** 2
        return s.ao[bins] * math.sqrt(max(q, 0.0))


def _ellipsoid_q(x, y, z, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Normalised squared radius of an axis-aligned (horizontal, horizontal, long) ellipsoid."""
    h, v = axes
    return ((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / h**2 + (z - centre[2]) ** 2 / v**2


def _capsule(x, y, z, p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
    """Points within ``radius`` of the segment p0-p1."""
    d = p1 - p0
    length2 = float(d @ d)
    t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    qx, qy, qz = x - (p0[0] + t * d[0]), y - (p0[1] + t * d[1]), z - (p0[2] + t * d[2])
    return qx * qx + qy * qy + qz * qz <= radius * radius


def heart_rotation(params: SubjectParams) -> np.ndarray:
    """3×3 rotation whose columns are the heart axes (x septal, y anterior, z base-ward) in RAS."""
    az, el = math.radians(params.axis_azimuth_deg), math.radians(params.axis_elevation_deg)
    z_axis = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    anterior = np.array([0.0, 1.0, 0.0])
    y_axis = anterior - (anterior @ z_axis) * z_axis
    y_axis /= np.linalg.norm(y_axis)
    x_axis = np.cross(y_axis, z_axis)
    roll = math.radians(params.axis_roll_deg)
    x_r = math.cos(roll) * x_axis + math.sin(roll) * y_axis
    y_r = -math.sin(roll) * x_axis + math.cos(roll) * y_axis
    return np.stack([x_r, y_r, z_axis], axis=1)


class BodyModel:
    """Torso around the heart: body outline, fat, muscle, lungs, liver, stomach, spine, aortas.

    Structures inside the thorax and abdomen move with respiration; the body wall and spine do not.

    Args:
        params: Subject parameters.
        heart: The subject's heart (for the mediastinum and diaphragm position).
        rotation: Heart axes in RAS (from :func:`heart_rotation`).
    """

    def __init__(self, params: SubjectParams, heart: HeartModel, rotation: np.ndarray) -> None:
        p = params
        self.p = p
        self.lr, self.ap = p.body_lr_mm, p.body_ap_mm
        self.inner_lr = self.lr - p.fat_mm - p.muscle_mm
        self.inner_ap = self.ap - p.fat_mm - p.muscle_mm
        self.spine_y = -(self.ap - p.fat_mm) + 62.0
        centre = np.asarray(p.heart_offset_mm) + rotation @ np.array([8.0, 0.0, 0.0])
        self.mediastinum_centre = centre
        self.mediastinum_axes = np.array([heart.R_epi + 14.0, heart.R_epi + 16.0, heart.L_ed + 40.0])
        self.dome_z = p.heart_offset_mm[2] - (heart.R_epi + 14.0)
        self.dome_x = 25.0

    def classify(self, pts: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Tissue class (uint8) of world points ``(N, 3)`` with internal organs displaced by ``shift``."""
        p = self.p
        x, y, z = (pts[:, i].astype(np.float32) for i in range(3))
        out = np.zeros(x.shape, dtype=np.uint8)
        body = (x / self.lr) ** 2 + (y / self.ap) ** 2 <= 1.0
        if p.sex == "F":
            for side in (-1.0, 1.0):
                breast = ((x - side * 0.42 * self.lr) / 55.0) ** 2 + ((y - 0.82 * self.ap) / 42.0) ** 2 + (
                    (z + 30.0) / 60.0
                ) ** 2 <= 1.0
                body |= breast
        out[body] = Tissue.FAT
        in_fat = (x / (self.lr - p.fat_mm)) ** 2 + (y / (self.ap - p.fat_mm)) ** 2 <= 1.0
        out[in_fat] = Tissue.MUSCLE
        thorax = (x / self.inner_lr) ** 2 + (y / self.inner_ap) ** 2 <= 1.0
        xi, yi, zi = x - shift[0], y - shift[1], z - shift[2]
        dome = self.dome_z - 0.005 * (xi - self.dome_x) ** 2 - 0.003 * yi**2
        below = zi < dome
        med = (
            ((xi - self.mediastinum_centre[0]) / self.mediastinum_axes[0]) ** 2
            + ((yi - self.mediastinum_centre[1]) / self.mediastinum_axes[1]) ** 2
            + ((zi - self.mediastinum_centre[2]) / self.mediastinum_axes[2]) ** 2
            <= 1.0
        ) | ((np.abs(xi + 5.0) < 28.0) & (yi > self.spine_y - 10.0))
        lung_r = ((xi - 0.48 * self.inner_lr) / (0.56 * self.inner_lr)) ** 2 + (
            (yi + 0.08 * self.inner_ap) / (0.95 * self.inner_ap)
        ) ** 2 <= 1.0
        lung_l = ((xi + 0.5 * self.inner_lr) / (0.55 * self.inner_lr)) ** 2 + (
            (yi + 0.12 * self.inner_ap) / (0.9 * self.inner_ap)
        ) ** 2 <= 1.0
        out[thorax] = Tissue.MEDIASTINUM
        out[thorax & ~below & (lung_r | lung_l) & ~med] = Tissue.LUNG
        out[thorax & below & (xi > -35.0)] = Tissue.LIVER
        out[thorax & below & (xi <= -35.0)] = Tissue.STOMACH
        # Spine and paraspinal muscles (fixed), descending aorta beside the spine.
        paraspinal = (np.abs(x) < 48.0) & (y < self.spine_y - 8.0) & in_fat
        out[paraspinal] = Tissue.MUSCLE
        vertebra = x**2 + (y - self.spine_y) ** 2 <= 17.0**2
        posterior = x**2 + (y - self.spine_y + 27.0) ** 2 <= 14.0**2
        out[vertebra | posterior] = Tissue.MARROW
        out[x**2 + (y - self.spine_y + 27.0) ** 2 <= 7.5**2] = Tissue.CSF
        out[(x + 24.0) ** 2 + (y - self.spine_y - 24.0) ** 2 <= 11.0**2] = Tissue.VESSEL_BLOOD
        return out


class Phantom:
    """A subject's heart in its body, in world (RAS) millimetres.

    Args:
        params: Subject parameters.
        es_fraction: End-systole as a fraction of the cycle.
    """

    def __init__(self, params: SubjectParams, es_fraction: float = 0.35) -> None:
        self.params = params
        self.heart = HeartModel(params, es_fraction)
        self.rotation = heart_rotation(params)
        #: World position of the heart-frame origin (LV endocardial apex at ED).
        self.origin = (
            np.asarray(params.heart_offset_mm, dtype=np.float64) - self.rotation[:, 2] * self.heart.L_ed
        )
        self.body = BodyModel(params, self.heart, self.rotation)

    def to_heart(self, pts: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` → heart frame, with the heart displaced by ``shift``."""
        return (pts - self.origin - shift) @ self.rotation  # (N, 3)

    def to_world(self, pts_h: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Heart-frame points ``(N, 3)`` → world (RAS) mm."""
        return pts_h @ self.rotation.T + self.origin + shift

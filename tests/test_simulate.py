"""Simulator: anatomy, ground truth, contrast and artefacts (small matrices, few frames)."""

from __future__ import annotations

import numpy as np
import pytest

from cmrfm.constants import Group, Label, Sequence, View
from cmrfm.errors import ConfigError
from cmrfm.simulate.anatomy import HeartModel, Phantom
from cmrfm.simulate.contrast import signal_table
from cmrfm.simulate.generator import make_config, simulate_study, subject_params
from cmrfm.simulate.groundtruth import volumes_from_labels, wall_thickness_mm, world_to_pixel
from cmrfm.simulate.kspace import cartesian_mask, ghosting_energy, ifft2c, undersampled_kspace
from cmrfm.simulate.motion import contraction, es_frame
from cmrfm.simulate.params import SubjectParams, sample_subject, validate_params
from cmrfm.simulate.planes import lax_plane, sax_stack
from cmrfm.simulate.render import acquire
from cmrfm.simulate.tissue import Tissue, label_lookup

SMALL = ["imaging.matrix=[64,64]", "imaging.fov_mm=[240,240]", "n_frames=3", "artefact.motion_grade=1"]


def small(*extra: str):
    return make_config([*SMALL, *extra])


# ----- parameters and errors ------------------------------------------------------------------------
def test_unknown_pathology_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown pathology"):
        sample_subject(0, group="XYZ")
    with pytest.raises(ConfigError, match="unknown pathology"):
        make_config(["groups=[NOR,FOO]"])


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("wall_septal_mm", -3.0, "wall_septal_mm"), ("lv_ef", 1.5, "lv_ef"), ("lv_edv_ml", 0.0, "lv_edv_ml")],
)
def test_bad_subject_parameters_are_config_errors(field, value, match):
    params = SubjectParams(**{field: value})
    with pytest.raises(ConfigError, match=match):
        validate_params(params)
    with pytest.raises(ConfigError, match=match):
        HeartModel(params)


@pytest.mark.parametrize(
    "override",
    [
        "n_frames=0",
        "sax.slice_thickness_mm=[-2,3]",
        "imaging.field_strengths=[7.0]",
        "sequences=[flair]",
        "views=[]",
        "artefact.motion_grade=4",
    ],
)
def test_bad_config_is_a_config_error(override):
    with pytest.raises(ConfigError):
        make_config([override])


def test_contraction_curve_ed_es():
    assert contraction(0.0) == pytest.approx(0.0)
    assert contraction(0.35) == pytest.approx(1.0)
    assert es_frame(25) in (8, 9)
    t = np.linspace(0, 1, 200, endpoint=False)
    c = contraction(t)
    assert c.min() >= 0 and c.max() <= 1


# ----- physiology per pathology --------------------------------------------------------------------
@pytest.mark.parametrize("group", list(Group))
def test_ef_within_defining_range(group):
    for seed in range(3):
        heart = HeartModel(sample_subject(seed, group=group))
        ef = 1 - heart.lv_volume_ml(0.35) / heart.lv_volume_ml(0.0)
        assert ef == pytest.approx(heart.p.lv_ef, abs=1e-6)
        if group in (Group.DCM, Group.MINF):
            assert ef < 0.40
        if group == Group.HCM:
            assert ef > 0.55
        if group == Group.NOR:
            assert 0.55 <= ef <= 0.75
        if group == Group.ARV:
            rv_ed = heart.numeric_volume_ml(0.0, (Tissue.RV_BLOOD,), 2.0)
            rv_es = heart.numeric_volume_ml(0.35, (Tissue.RV_BLOOD,), 2.0)
            assert 1 - rv_es / rv_ed < 0.40
            assert rv_ed / heart.p.bsa_m2 > 100


def test_myocardial_volume_conserved_and_rv_calibrated():
    heart = HeartModel(sample_subject(4, group=Group.NOR))
    myo = (Tissue.MYO, Tissue.SCAR, Tissue.MVO)
    for t in (0.0, 0.2, 0.35, 0.7):
        assert heart.numeric_volume_ml(t, myo, 1.0) == pytest.approx(heart.myo_volume_ml(), rel=0.03)
    rv = heart.numeric_volume_ml(0.0, (Tissue.RV_BLOOD,), 1.0)
    assert rv == pytest.approx(heart.p.rv_edv_ml, rel=0.05)
    assert heart.rv_volume_ml(0.0, 1.0) == pytest.approx(rv, rel=0.02)  # fast path, other grid
    lv = heart.numeric_volume_ml(0.0, (Tissue.LV_BLOOD, Tissue.PAPILLARY), 1.0)
    assert lv == pytest.approx(heart.lv_volume_ml(0.0), rel=0.02)


# ----- masks vs analytic ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fine_study():
    config = make_config(
        [
            "imaging.matrix=[128,128]",
            "imaging.fov_mm=[200,200]",
            "imaging.supersample=1",
            "imaging.depth_samples=1",
            "n_frames=3",
            "sax.slice_thickness_mm=[2.5,2.5]",
            "sax.slice_gap_mm=[0,0]",
            "artefact.misalignment_mm=0",
            "artefact.motion_grade=1",
            "views=[sax,4ch]",
            "sequences=[cine]",
        ]
    )
    return simulate_study(subject_params(11, config, group="NOR"), config, seed=11)


def test_mask_volumes_within_5_percent_of_analytic(fine_study):
    truth = fine_study.clinical.extra["truth"]
    for key in ("lv_edv_ml", "lv_esv_ml", "rv_edv_ml", "rv_esv_ml", "lv_mass_g"):
        assert truth[f"{key}_mask"] == pytest.approx(truth[key], rel=0.05), key


def test_sax_and_lax_labels_agree_on_their_intersection(fine_study):
    sax = fine_study.find(Sequence.CINE, View.SAX)[0]
    lax = fine_study.find(Sequence.CINE, View.FOUR_CH)[0]
    inv_sax, inv_lax = np.linalg.inv(sax.affine), np.linalg.inv(lax.affine)
    n_sax, n_lax = sax.slice_normal, lax.slice_normal
    direction = np.cross(n_sax, n_lax)
    direction /= np.linalg.norm(direction)
    agree = total = 0
    for k in range(sax.num_slices):
        p_sax = sax.positions()[k]
        p_lax = lax.positions()[0]
        # a point on both planes: least-squares solution of the two plane equations
        a = np.stack([n_sax, n_lax])
        b = np.array([n_sax @ p_sax, n_lax @ p_lax])
        p0 = np.linalg.lstsq(a, b, rcond=None)[0]
        pts = p0[None] + np.arange(-150, 150, 0.5)[:, None] * direction[None]
        homog = np.c_[pts, np.ones(len(pts))]
        ij_s = np.rint((homog @ inv_sax.T)[:, :2]).astype(int)
        ij_l = np.rint((homog @ inv_lax.T)[:, :2]).astype(int)
        ok = (ij_s >= 0).all(1) & (ij_s < 128).all(1) & (ij_l >= 0).all(1) & (ij_l < 128).all(1)
        ls = sax.labels[0][ij_s[ok, 0], ij_s[ok, 1], k]
        ll = lax.labels[0][ij_l[ok, 0], ij_l[ok, 1], 0]
        ll = np.where(np.isin(ll, (Label.LA, Label.RA)), 0, ll)
        fg = (ls > 0) | (ll > 0)
        agree += int(np.count_nonzero(ls[fg] == ll[fg]))
        total += int(np.count_nonzero(fg))
    assert total > 100
    assert agree / total > 0.85


def test_hcm_wall_thicker_than_15mm():
    config = small("imaging.matrix=[96,96]", "imaging.fov_mm=[192,192]", "views=[sax]", "sequences=[cine]")
    study = simulate_study(subject_params(2, config, group="HCM"), config, seed=2)
    sax = study.series[0]
    best = 0.0
    for k in range(sax.num_slices):
        thickness = wall_thickness_mm(sax.labels[0][:, :, k], sax.spacing[:2])
        if thickness.size:
            best = max(best, float(thickness.max()))
    assert best > 15.0
    nor = simulate_study(subject_params(2, config, group="NOR"), config, seed=2).series[0]
    mid = nor.num_slices // 2
    assert float(np.median(wall_thickness_mm(nor.labels[0][:, :, mid], nor.spacing[:2]))) < 13.0


def test_mask_ef_matches_group_for_dcm_and_hcm():
    config = small("imaging.matrix=[96,96]", "imaging.fov_mm=[192,192]", "views=[sax]", "sequences=[cine]")
    dcm = simulate_study(subject_params(5, config, group="DCM"), config, seed=5).clinical.extra["truth"]
    hcm = simulate_study(subject_params(5, config, group="HCM"), config, seed=5).clinical.extra["truth"]
    assert dcm["lv_ef_mask"] < 0.45 and dcm["lv_ef"] < 0.40
    assert hcm["lv_ef_mask"] > 0.55 and hcm["lv_ef"] > 0.55


# ----- landmarks --------------------------------------------------------------------------------------
def _near(mask: np.ndarray, ij: list[float], radius: float) -> set[int]:
    ii, jj = np.meshgrid(np.arange(mask.shape[0]), np.arange(mask.shape[1]), indexing="ij")
    close = (ii - ij[0]) ** 2 + (jj - ij[1]) ** 2 <= radius**2
    return {int(v) for v in np.unique(mask[close])}


def test_rv_insertion_points_lie_on_lv_rv_junction(fine_study):
    sax = fine_study.find(Sequence.CINE, View.SAX)[0]
    marks = sax.metadata["landmarks"]["0"]
    checked = 0
    for z, names in marks.items():
        for name in ("rv_insertion_anterior", "rv_insertion_inferior"):
            near = _near(sax.labels[0][:, :, int(z)], names[name]["pixel"], 2.5)
            assert {Label.MYO, Label.RV} <= near, (z, name, near)
            checked += 1
    assert checked >= 10
    # world and pixel coordinates agree through the affine
    z, names = next(iter(marks.items()))
    ij = names["rv_insertion_anterior"]["pixel"]
    world = (sax.affine @ np.array([ij[0], ij[1], int(z), 1.0]))[:3]
    assert np.allclose(world, names["rv_insertion_anterior"]["world"], atol=1e-2)


def test_lax_landmarks_on_valve_plane_and_apex(fine_study):
    lax = fine_study.find(Sequence.CINE, View.FOUR_CH)[0]
    mask = lax.labels[0][:, :, 0]
    marks = lax.metadata["landmarks"]["0"]["0"]
    lv_j = np.nonzero(mask == Label.LV)[1]
    myo_j = np.nonzero(mask == Label.MYO)[1]
    for name in ("mitral_hinge_septal", "mitral_hinge_lateral"):
        ij = marks[name]["pixel"]
        assert {Label.LV, Label.MYO} <= _near(mask, ij, 2.5)
        # the valve plane bounds the LV cavity: no LV beyond it towards the atria (+j)
        assert lv_j.max() <= ij[1] + 1.0
        assert Label.LA in _near(mask, ij, 6.0)
    apex = marks["lv_apex"]["pixel"]
    assert abs(apex[1] - myo_j.min()) <= 1.5
    assert Label.MYO in _near(mask, apex, 2.0)


# ----- contrast and artefacts --------------------------------------------------------------------------
def test_lge_scar_brighter_than_remote_myocardium():
    config = small("imaging.matrix=[96,96]", "imaging.fov_mm=[220,220]", "views=[sax]", "sequences=[lge]")
    params = subject_params(3, config, group="MINF")
    study = simulate_study(params, config, seed=3)
    lge = study.series[0]
    image, labels = lge.image[..., 0], lge.labels[0]
    assert np.count_nonzero(labels == Label.INFARCT) > 10
    assert image[labels == Label.INFARCT].mean() > 2.0 * image[labels == Label.MYO].mean()
    assert study.clinical.infarct is True
    assert study.clinical.extra["truth"]["scar_fraction"] > 0


def test_maps_are_in_milliseconds():
    config = small("views=[sax]", "sequences=[t1map,t2map]")
    study = simulate_study(subject_params(1, config, group="NOR"), config, seed=1)
    t1, t2 = study.series
    assert t1.sequence == Sequence.T1_MAP and t2.sequence == Sequence.T2_MAP
    for series, low, high in ((t1, 850, 1150), (t2, 40, 60)):
        myo = series.image[..., 0][series.labels[0] == Label.MYO]
        assert low < np.median(myo) < high


def test_motion_grade_increases_ghosting_outside_body():
    rng = np.random.default_rng(0)
    phantom = Phantom(sample_subject(7, group=Group.NOR))
    plane = sax_stack(phantom, (96, 96), 3.2, 8.0, 2.0, 2.0, rng)[3]
    energies = []
    for grade in (1, 2, 3):
        table = signal_table(Sequence.CINE, 1.5, np.random.default_rng(1), 900.0, 0.03)
        acq = acquire(
            phantom, [plane], np.array([0.0]), table, label_lookup(False, False), np.zeros((1, 3)),
            np.random.default_rng(2), snr=60.0, grade=grade,
        )  # fmt: skip
        energies.append(ghosting_energy(acq.image[:, :, 0, 0], acq.body[:, :, 0]))
    assert energies[0] < energies[1] < energies[2]
    assert energies[2] > 2 * energies[0]


def test_undersampling_masks_and_kspace():
    rng = np.random.default_rng(0)
    for accel in (4, 8, 10):
        mask = cartesian_mask(128, accel, rng, centre_lines=16)
        assert mask[56:72].all()
        assert abs(mask.sum() - max(round(128 / accel), 16)) <= 1
    image = np.zeros((32, 32), dtype=np.float32)
    image[8:24, 8:24] = 1
    sens = np.ones((2, 32, 32), dtype=np.complex64)
    data = undersampled_kspace(image, sens, 4, 0.0, rng, centre_lines=8)
    assert data["kspace"].shape == (2, 32, 32) and data["kspace"].dtype == np.complex64
    full = np.sqrt((np.abs(ifft2c(data["kspace"])) ** 2).sum(0))
    assert np.allclose(full, np.sqrt(2) * image, atol=1e-4)
    assert data["zero_filled"].shape == (32, 32)
    assert not np.allclose(data["zero_filled"], full, atol=1e-3)  # aliasing from undersampling
    with pytest.raises(ConfigError):
        cartesian_mask(64, 0, rng)


def test_seeds_reproducible_and_distinct():
    config = small("views=[sax,2ch]", "sequences=[cine,lge]", "artefact.motion_grade=0")
    a, b = simulate_study(3, config), simulate_study(3, config)
    c = simulate_study(4, config)
    for sa, sb in zip(a.series, b.series, strict=True):
        assert np.array_equal(sa.image, sb.image)
        assert all(np.array_equal(sa.labels[t], sb.labels[t]) for t in sa.labels)
        assert np.array_equal(sa.affine, sb.affine)
    assert a.clinical.extra["truth"] == b.clinical.extra["truth"]
    assert not np.array_equal(a.series[0].image, c.series[0].image)


def test_geometry_is_consistent_world_coordinates():
    config = small("views=[sax,2ch,3ch,4ch]", "sequences=[cine]", "artefact.misalignment_mm=0")
    study = simulate_study(8, config)
    sax = study.find(Sequence.CINE, View.SAX)[0]
    phantom = Phantom(subject_params(8, config), config.es_fraction)
    long_axis = phantom.rotation[:, 2]
    assert abs(abs(sax.slice_normal @ long_axis) - 1) < 1e-6  # SAX ⟂ LV long axis
    for view in (View.TWO_CH, View.THREE_CH, View.FOUR_CH):
        lax = study.find(Sequence.CINE, view)[0]
        assert abs(lax.slice_normal @ long_axis) < 1e-6  # LAX contains the long axis
    plane = lax_plane(phantom, View.FOUR_CH, (64, 64), 3.0, 8.0, 0.0, np.random.default_rng(0))
    assert np.allclose(world_to_pixel(plane, plane.origin[None]), 0)


def test_volumes_from_labels_units():
    labels = np.zeros((10, 10, 2), dtype=np.uint8)
    labels[:5, :4, 0] = Label.LV
    labels[:2, :, 1] = Label.MYO
    vols = volumes_from_labels(labels, (2.0, 2.0, 5.0))
    assert vols["lv_ml"] == pytest.approx(20 * 20 * 1e-3)
    assert vols["lv_mass_g"] == pytest.approx(20 * 20 * 1e-3 * 1.05)


def test_matrix_scale_varies_matrix_per_subject():
    config = small("views=[2ch]", "sequences=[cine]", "imaging.matrix_scale=[0.5,1.5]")
    shapes = {simulate_study(seed, config).series[0].shape[:2] for seed in range(4)}
    assert len(shapes) > 1
    assert all(s[0] == s[1] and s[0] % 2 == 0 for s in shapes)


def test_mvo_core_is_labelled_and_dark_on_lge():
    import dataclasses

    config = small("imaging.matrix=[96,96]", "imaging.fov_mm=[220,220]", "views=[sax]", "sequences=[lge]")
    params = dataclasses.replace(
        subject_params(3, config, group="MINF"), transmurality=1.0, mvo=True, infarct_width_deg=110.0
    )
    lge = simulate_study(params, config, seed=3).series[0]
    image, labels = lge.image[..., 0], lge.labels[0]
    assert np.count_nonzero(labels == Label.MVO) > 3
    assert image[labels == Label.MVO].mean() < image[labels == Label.INFARCT].mean()


def test_breath_hold_misalignment_moves_anatomy_between_slices():
    base = ["views=[sax]", "sequences=[cine]"]
    still = simulate_study(6, small(*base, "artefact.misalignment_mm=0")).series[0]
    moved = simulate_study(6, small(*base, "artefact.misalignment_mm=6")).series[0]
    offsets = np.asarray(moved.metadata["breath_hold_offsets_mm"])
    assert offsets.shape == (moved.num_slices, 3) and np.abs(offsets).max() > 1.0
    assert np.allclose(still.metadata["breath_hold_offsets_mm"], 0.0)
    assert not np.array_equal(still.labels[0], moved.labels[0])
    assert np.array_equal(still.affine, moved.affine)  # geometry is nominal; the anatomy moved

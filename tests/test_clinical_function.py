import numpy as np
import pytest

from cmrfm.clinical.function import (
    body_surface_area_m2,
    detect_ed_es,
    slice_spacing_mm,
    ventricular_function,
    volume_curve_ml,
)
from cmrfm.clinical.normal_ranges import flag_measurements, load_ranges
from cmrfm.constants import Label
from cmrfm.errors import ConfigError


def _masks():
    ed = np.zeros((10, 10, 4), np.uint8)
    es = np.zeros_like(ed)
    ed[2:6, 2:6, :] = Label.LV  # 16 px × 4 slices
    ed[1:7, 1:2, :] = Label.MYO  # 6 px × 4
    ed[7:9, 2:6, :] = Label.RV  # 8 px × 4
    es[3:5, 3:5, :] = Label.LV  # 4 px × 4
    es[7:8, 2:6, :] = Label.RV  # 4 px × 4
    return ed, es


def test_ventricular_function_hand_computed():
    ed, es = _masks()
    # pixel 2 mm × 2 mm = 4 mm², slice spacing 10 mm: one voxel = 40 mm³ = 0.04 mL
    f = ventricular_function(ed, es, 4.0, 10.0)
    assert f.lv_edv_ml == pytest.approx(64 * 0.04)
    assert f.lv_esv_ml == pytest.approx(16 * 0.04)
    assert f.lv_ef_pct == pytest.approx(75.0)
    assert f.rv_ef_pct == pytest.approx(50.0)
    assert f.lv_mass_g == pytest.approx(24 * 0.04 * 1.05)
    assert f.indexed(2.0)["lv_edv_ml_m2"] == pytest.approx(64 * 0.04 / 2)


def test_curve_and_ed_es():
    ed, es = _masks()
    cine = np.stack([es, ed, es], axis=-1)  # (X, Y, Z, T)
    curve = volume_curve_ml(cine, Label.LV, 1.0, 1.0)
    assert curve.tolist() == [0.016, 0.064, 0.016]
    assert detect_ed_es(curve) == (1, 0)
    # an ED/ES pair with a failing LV: the LV alone points the wrong way, LV+RV the right way
    assert detect_ed_es([150.0, 151.0]) == (1, 0)
    assert detect_ed_es([150.0, 151.0], rv_volumes=[160.0, 90.0]) == (0, 1)
    # a cine (more than two frames) keeps the LV-only rule
    assert detect_ed_es([100.0, 60.0, 90.0], rv_volumes=[50.0, 200.0, 50.0]) == (0, 1)
    with pytest.raises(ValueError):
        detect_ed_es([])


def test_slice_spacing_uses_positions_including_gaps():
    positions = np.array([[0, 0, 0], [0, 0, 10.0], [0, 0, 20.0]])
    assert slice_spacing_mm(positions, 8.0) == 10.0
    assert slice_spacing_mm(None, 8.0) == 8.0


def test_bsa_and_flags(tmp_path):
    assert body_surface_area_m2(180, 80) == pytest.approx(2.0)
    flags = flag_measurements({"lv_ef_pct": 30.0, "lv_edv_ml_m2": 80.0, "unrelated": 1.0}, sex="male")
    assert flags["lv_ef_pct"]["flag"] == "low" and flags["lv_edv_ml_m2"]["flag"] == "normal"
    assert "unrelated" not in flags
    pooled = load_ranges()["unknown"]["lv_mass_g"]
    assert pooled == (72, 176)
    bad = tmp_path / "r.yaml"
    bad.write_text("male: {lv_ef_pct: 5}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml"):
        load_ranges(bad)

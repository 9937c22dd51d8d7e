import numpy as np
import pytest
from dicom_factory import write_cine
from scipy import ndimage

from cmrfm.constants import Label, Sequence, View
from cmrfm.data.adapters.sunnybrook import SunnybrookAdapter, rasterise_polygon, read_contour
from cmrfm.errors import InputError
from cmrfm.io.loader import detect_adapter, load_studies, load_study

#: Ring just outside the endocardium used to compare blood pool with its surroundings (pixels).
RING_PX = 2
#: Blood pool must be this much brighter than the ring (observed >= 1.6 on the real study).
MIN_CONTRAST = 1.5


def test_rasterise_polygon_x_is_column_and_y_is_row():
    # A rectangle spanning columns 2..5 and rows 1..3 on an image of 8 columns and 6 rows.
    square = np.array([[1.5, 0.5], [5.5, 0.5], [5.5, 3.5], [1.5, 3.5]])
    mask = rasterise_polygon(square, (8, 6))  # (X, Y)
    expected = np.zeros((8, 6), bool)
    expected[2:6, 1:4] = True
    np.testing.assert_array_equal(mask, expected)


def _write_contour(path, points):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in points))


def _fake_root(tmp_path):
    """A Sunnybrook-like root: a 3×4 cine named N.dcm, one endo+epi image and one endo-only image."""
    root = tmp_path / "sunnybrook"
    write_cine(root / "dicoms" / "SCD0000901", vendor="siemens", n_slices=3, n_frames=4, names="instance")
    (root / "link.csv").write_text("patient_id,original_id\nSCD0000901,SC-HYP-9\n")
    contours = root / "contourfiles" / "SC-HYP-9"
    endo = [(3.5, 4.5), (7.5, 4.5), (7.5, 9.5), (3.5, 9.5)]  # columns 4..7, rows 5..9
    epi = [(2.5, 3.5), (8.5, 3.5), (8.5, 10.5), (2.5, 10.5)]  # columns 3..8, rows 4..10
    # siemens style: InstanceNumber = slice * 4 + frame + 1 -> image 6 is slice 1, frame 1
    _write_contour(contours / "i-contours" / "IM-0001-0006-icontour-manual.txt", endo)
    _write_contour(contours / "o-contours" / "IM-0001-0006-ocontour-manual.txt", epi)
    _write_contour(contours / "i-contours" / "IM-0001-0012-icontour-manual.txt", endo)  # slice 2, frame 3
    return root


def test_synthetic_layout_places_contours_on_the_right_image_and_pixels(tmp_path):
    root = _fake_root(tmp_path)
    adapter, single = detect_adapter(root)
    assert adapter is SunnybrookAdapter and not single
    [result] = load_studies(root)
    study = result.study
    series = study.series[0]
    assert study.study_id == "SCD0000901" and study.dataset == "sunnybrook"
    assert series.sequence == Sequence.CINE and series.view == View.SAX
    assert sorted(series.labels) == [1, 3]
    assert series.metadata["labelled_slices"] == {"1": [1], "3": [2]}
    lv = np.zeros((12, 16), bool)
    lv[4:8, 5:10] = True
    ring = np.zeros((12, 16), bool)
    ring[3:9, 4:11] = True
    ring &= ~lv
    plane = series.labels[1][:, :, 1]
    np.testing.assert_array_equal(plane == Label.LV, lv)
    np.testing.assert_array_equal(plane == Label.MYO, ring)
    assert not series.labels[1][:, :, [0, 2]].any()
    endo_only = series.labels[3][:, :, 2]
    np.testing.assert_array_equal(endo_only == Label.LV, lv)
    assert not (endo_only == Label.MYO).any()  # no epicardium: LV only
    assert study.clinical.extra["sunnybrook_category"] == "HYP"


def test_contour_numbered_after_missing_image_is_an_input_error(tmp_path):
    root = _fake_root(tmp_path)
    _write_contour(
        root / "contourfiles" / "SC-HYP-9" / "i-contours" / "IM-0001-0099-icontour-manual.txt",
        [(1, 1), (2, 1), (2, 2)],
    )
    with pytest.raises(InputError, match="no DICOM image numbered 99"):
        load_study(root / "dicoms" / "SCD0000901")


def test_bad_contour_file(tmp_path):
    path = tmp_path / "IM-0001-0001-icontour-manual.txt"
    path.write_text("1 2\nthree four\n")
    with pytest.raises(InputError, match="not a list"):
        read_contour(path)


@pytest.fixture(scope="module")
def real_study(sunnybrook_root):
    return load_study(sunnybrook_root / "dicoms" / "SCD0000101")


def test_real_study_geometry(real_study):
    series = real_study.series[0]
    assert series.shape == (256, 256, 12, 20)
    assert series.spacing[:2] == pytest.approx((1.367, 1.367), abs=1e-3)
    along = series.positions() @ series.slice_normal
    assert np.all(np.diff(along) > 0) and np.diff(along) == pytest.approx(10.0, abs=0.01)
    assert np.all(np.diff(series.frame_times_ms) > 0)
    assert series.metadata["vendor"] == "GE" and series.metadata["field_strength_t"] == 1.5


def _contrast(image, lv):
    ring = ndimage.binary_dilation(lv, iterations=RING_PX) & ~lv
    return float(image[lv].mean() / image[ring].mean())


def test_real_contours_sit_on_bright_blood_pool(real_study):
    series = real_study.series[0]
    assert series.labels_present() == ["LV", "MYO"]
    contrasts, transposed, shifted = [], [], []
    for t, mask in series.labels.items():
        for k in map(int, series.metadata["labelled_slices"][str(t)]):
            lv = mask[:, :, k] == Label.LV
            image = series.image[:, :, k, t]
            assert lv.sum() > 50
            contrast = _contrast(image, lv)
            assert contrast > MIN_CONTRAST, (t, k, contrast)
            myo = mask[:, :, k] == Label.MYO
            if myo.any():
                assert image[lv].mean() > MIN_CONTRAST * image[myo].mean()
            contrasts.append(contrast)
            transposed.append(_contrast(image, lv.T))
            shifted.extend(_contrast(image, np.roll(lv, s, axis=a)) for a in (0, 1) for s in (-3, 3))
    assert len(contrasts) == 18  # 9 slices at ED and ES
    # the true placement beats a transposed or shifted one: the rasterisation is on the right pixels
    assert np.mean(contrasts) > np.mean(transposed) + 0.5
    assert np.mean(contrasts) > np.mean(shifted) + 0.2
    assert real_study.clinical.ed_frame != real_study.clinical.es_frame


def test_real_root_lists_the_study(sunnybrook_root):
    assert SunnybrookAdapter.list_studies(sunnybrook_root)[0].name == "SCD0000101"
    adapter, single = detect_adapter(sunnybrook_root)
    assert adapter is SunnybrookAdapter and not single

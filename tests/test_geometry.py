import numpy as np

from cmrfm.clinical.geometry import rv_insertion_points, septal_direction
from cmrfm.constants import Label
from cmrfm.tasks.items import phantom_slice


def test_insertion_points_match_phantom_geometry():
    rng = np.random.default_rng(3)
    for _ in range(5):
        s = phantom_slice(rng, 64)
        pts = rv_insertion_points(s["mask"])
        assert pts is not None
        # each detected point is within 3 px of one analytic insertion point
        d = np.linalg.norm(pts[:, None, :] - s["landmarks"][None], axis=-1)
        assert d.min(axis=1).max() < 3.0 and d.min(axis=0).max() < 3.0
        # both lie on the myocardium / RV boundary region
        for x, y in pts.round().astype(int):
            window = s["mask"][y - 2 : y + 3, x - 2 : x + 3]
            assert (window == Label.MYO).any() and (window == Label.RV).any()
        direction = septal_direction(s["mask"])
        assert direction[0] < -0.9  # the phantom's RV (septum) is to the image left


def test_no_junction_no_points():
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 10:20] = Label.MYO
    mask[12:18, 12:18] = Label.LV
    assert rv_insertion_points(mask) is None
    mask[0:3, 0:3] = Label.RV  # RV far away: no contact
    assert rv_insertion_points(mask) is None

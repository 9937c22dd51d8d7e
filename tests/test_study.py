import numpy as np
import pytest

from cmrfm.constants import Label
from cmrfm.data.study import Series, Study, ras_to_lps
from cmrfm.errors import CmrfmError, InputError
from cmrfm.registry import Registry


def _affine(sx=1.5, sy=1.5, sz=8.0):
    return np.diag([sx, sy, sz, 1.0])


def test_series_shapes_and_geometry():
    image = np.random.default_rng(0).random((16, 12, 5, 3))
    mask = np.zeros((16, 12, 5), np.uint8)
    mask[4:8, 4:8, 2] = Label.LV
    s = Series("cine", image, _affine(), labels={1: mask})
    assert s.shape == (16, 12, 5, 3) and s.spacing == (1.5, 1.5, 8.0)
    assert s.labels_present() == ["LV"]
    assert np.allclose(s.positions()[:, 2], np.arange(5) * 8.0)
    single = s.frame(1)
    assert single.shape == (16, 12, 5, 1) and list(single.labels) == [0]
    assert s.image.dtype == np.float32
    # 2D input is promoted to (X, Y, 1, 1)
    assert Series("p", np.zeros((8, 8)), np.eye(4)).shape == (8, 8, 1, 1)
    assert np.allclose(ras_to_lps(ras_to_lps(_affine())), _affine())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": np.zeros((1, 8, 2))}, "too small"),
        ({"image": np.zeros((0, 8, 2))}, "empty"),
        ({"image": np.zeros((8, 8, 2, 2, 2))}, "5 dimensions"),
        ({"image": np.zeros((8, 8, 2)), "affine": np.zeros((4, 4))}, "singular"),
        ({"image": np.zeros((8, 8, 2)), "labels": {0: np.zeros((8, 7, 2))}}, "label of frame 0"),
        ({"image": np.zeros((8, 8, 2)), "labels": {3: np.zeros((8, 8, 2))}}, "outside"),
    ],
)
def test_series_rejects_bad_arrays(kwargs, message):
    kwargs.setdefault("affine", np.eye(4))
    with pytest.raises(InputError, match=message):
        Series(name="bad", source_paths=["/x/bad.nii.gz"], **kwargs)


def test_study_requires_series_and_summarises():
    with pytest.raises(InputError, match="no image series"):
        Study("s", [], source="/x")
    study = Study("s", [Series("a", np.zeros((8, 8, 2)), np.eye(4))])
    assert study.summary()["series"][0]["shape"] == [8, 8, 2, 1]


def test_registry():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    assert reg.get("a") == 1 and "a" in reg and reg.names() == ["a"]
    with pytest.raises(CmrfmError, match="choose one of: a"):
        reg.get("b")
    with pytest.raises(CmrfmError, match="twice"):
        reg.register("a")(2)

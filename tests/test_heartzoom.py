"""Heart zoom: the box, the zoom and its inverse, zoomed training items, the two-pass refinement."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from cmrfm.tasks.heartzoom import HeartZoomItems, ZoomBox, heart_box, refine_with_zoom, unzoom, zoom


def _heart(rows: slice, cols: slice, size: int = 128) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = True
    return mask


def test_heart_box_centres_the_heart_and_clips_the_zoom():
    box = heart_box(_heart(slice(40, 80), slice(50, 100))[None], fill=0.5)  # 40 x 50 px heart
    assert (box.y0, box.x0, box.side) == (10.0, 25.0, 100.0)  # side 50 / 0.5, centre (60, 75)
    assert heart_box(_heart(slice(60, 64), slice(60, 64))[None], 0.8).side == pytest.approx(128 / 3)
    assert heart_box(_heart(slice(0, 120), slice(4, 124))[None], 0.8).side == 128  # never shrinks
    assert heart_box(np.zeros((2, 128, 128), bool), 0.8) is None
    # the union over slices decides: a second slice widens the box
    stack = np.stack([_heart(slice(40, 80), slice(50, 90)), _heart(slice(40, 80), slice(30, 70))])
    assert heart_box(stack, 1.0) == ZoomBox(30.0, 30.0, 60.0)  # 60 px wide, centred on row 60
    with pytest.raises(ValueError, match="fill"):
        heart_box(stack, 0.0)


def test_zoom_twice_repeats_each_pixel_and_unzoom_inverts_it():
    image = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    box = ZoomBox(4.0, 2.0, 8.0)  # rows 4-11, columns 2-9, zoomed 2x to 16 px
    zoomed = zoom(image, box, 16, mode="nearest")
    expected = image[0, 0, 4:12, 2:10].repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(zoomed[0, 0], expected)
    base = torch.full_like(image, -1.0)
    back = unzoom(zoom(image, box, 16), box, base)
    assert torch.allclose(back[0, 0, 4:12, 2:10], image[0, 0, 4:12, 2:10], atol=1e-4)
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[4:12, 2:10] = False
    assert (back[0, 0][outside] == -1).all()  # outside the box the first pass is kept


def test_zoomed_training_items_keep_image_and_mask_aligned():
    mask = np.zeros((64, 64), np.int64)
    mask[24:40, 20:36] = 1  # LV
    mask[28:32, 24:28] = 3  # scar
    image = (mask > 0).astype(np.float32) + (mask == 3)
    item = {"image": image, "mask": mask, "volume": "v", "spacing": np.array([1.5, 1.5, 8.0], np.float32)}
    torch.manual_seed(0)
    zoomed = HeartZoomItems([item], prob=1.0, fill=0.75, heart_classes=(1, 2, 3, 4))[0]
    heart = zoomed["mask"] > 0
    rows, cols = np.nonzero(heart.any(1))[0], np.nonzero(heart.any(0))[0]
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    assert 0.6 * 64 <= extent <= 0.9 * 64  # the 16-px heart now fills 65-85 % of the crop
    assert zoomed["spacing"][0] == pytest.approx(1.5 * 16 / 64 / (extent / 64), rel=0.1)
    assert zoomed["spacing"][2] == 8.0 and item["spacing"][0] == 1.5  # the source item is untouched
    # pixels inside each labelled region (3 px from its edge) carry that region's intensity
    for label, value in ((3, 2.0), (1, 1.0), (0, 0.0)):
        inner = ndimage.binary_erosion(np.asarray(zoomed["mask"]) == label, iterations=3)
        assert inner.sum() > 16
        np.testing.assert_allclose(zoomed["image"][inner], value, atol=0.05)  # a shift would miss by >= 0.3
    assert HeartZoomItems([item], prob=0.0, fill=0.75, heart_classes=(1,))[0]["image"] is image


def test_refine_with_zoom_replaces_the_heart_with_the_second_pass():
    # a "model" that reads the class from intensity at any zoom: its second pass is exact too
    size = 32
    image = torch.zeros(3, 1, size, size)
    image[:2, 0, 10:18, 12:20] = 1.0  # volume "a": two slices with a heart
    image[2, 0, 5:9, 5:9] = 1.0  # volume "b": one slice

    calls = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        fg = (x[:, 0] > 0.5).float()  # (n, H, W)
        return torch.stack([1 - fg, fg], dim=1)  # (n, 2, H, W)

    first = torch.stack([torch.ones(3, size, size), torch.zeros(3, size, size)], dim=1)  # all background
    first[:2, :, 10:18, 12:20] = torch.tensor([0.0, 1.0])[:, None, None]  # first pass finds "a"'s heart
    refined = refine_with_zoom(predict, image, first, ["a", "a", "b"], fill=0.5, heart_classes=(1,))
    assert calls == [2]  # one box for volume "a"; "b" has no predicted heart and keeps its first pass
    assert torch.equal(refined[2], first[2])
    truth = image[:2, 0] > 0.5
    assert torch.equal(refined[:2].argmax(1).bool(), truth)
    np.testing.assert_allclose(refined.sum(1).numpy(), 1.0, atol=1e-5)

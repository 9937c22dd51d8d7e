import torch

from cmrfm.tasks.augment import AugmentConfig, augment_item, random_affine, warp, warp_points


def test_mask_and_points_move_together():
    g = torch.Generator().manual_seed(0)
    h, w = 48, 40
    image = torch.zeros(1, h, w)
    mask = torch.zeros(h, w, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    blob = ((xs - 27) ** 2 + (ys - 14) ** 2) <= 9
    mask[blob] = 2
    image[0][blob] = 1.0
    points = torch.tensor([[27.0, 14.0]])
    cfg = AugmentConfig(noise_std=0.0, blur_prob=0.0, gamma=(1.0, 1.0), contrast=(1.0, 1.0))
    for _ in range(10):
        img, m, p = augment_item(image, cfg, g, mask, points)
        assert set(m.unique().tolist()) <= {0, 2} and m.dtype == torch.long
        if (m == 2).sum() == 0:
            continue
        ys2, xs2 = torch.nonzero(m == 2, as_tuple=True)
        centre = torch.stack([xs2.float().mean(), ys2.float().mean()])
        assert torch.dist(centre, p[0]) < 1.0  # landmark stays at the blob centre
        assert img[0][m == 2].mean() > 0.6 > 0.05 > img[0][m == 0].mean()  # image warped like the mask


def test_identity_warp_and_point_roundtrip():
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    x = torch.rand(1, 8, 8)
    assert torch.allclose(warp(x, theta, "bilinear"), x, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    theta = random_affine(AugmentConfig(), g)
    pts = torch.tensor([[3.0, 5.0]])
    assert warp_points(pts, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), (8, 8)).allclose(pts)
    assert warp_points(pts, theta, (8, 8)).shape == (1, 2)

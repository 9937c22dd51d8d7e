import pytest
import torch

from cmrfm.models.heads import (
    AttentionPool,
    ClassificationHead,
    LandmarkHead,
    SegmentationDecoder,
    per_level_uncertainty,
    soft_argmax_2d,
)


@pytest.mark.parametrize(("patch", "levels"), [(8, 4), (16, 4), (4, 2), (8, 1), (2, 3)])
def test_decoder_shapes_and_gradients(patch, levels):
    b, d, size = 2, 24, 32
    grid = size // patch
    feats = [torch.randn(b, d, grid, grid, requires_grad=True) for _ in range(levels)]
    image = torch.randn(b, 1, size, size)
    dec = SegmentationDecoder(d, levels, patch, out_channels=4, base_channels=8)
    out = dec(feats, image)
    assert out.logits.shape == (b, 4, size, size)
    assert len(out.stage_logits) == dec.stages + 1
    assert out.stage_logits[0].shape[-1] == grid
    out.logits.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    unc = per_level_uncertainty(out.stage_logits, (size, size))
    assert unc.shape == (b, 4, size, size) and (unc >= 0).all()


def test_decoder_rejects_bad_patch():
    with pytest.raises(ValueError, match="power of two"):
        SegmentationDecoder(8, 2, 6, 2)


def test_soft_argmax_finds_peak():
    hm = torch.full((1, 2, 16, 20), -50.0)
    hm[0, 0, 3, 11] = 50.0  # row 3, column 11
    hm[0, 1, 12, 2] = 50.0
    xy = soft_argmax_2d(hm)
    assert torch.allclose(xy[0], torch.tensor([[11.0, 3.0], [2.0, 12.0]]), atol=1e-3)
    head = LandmarkHead(16, 2, 8, num_landmarks=3)
    heat, coords = head([torch.randn(1, 16, 4, 4)] * 2, torch.randn(1, 1, 32, 32))
    assert heat.shape == (1, 3, 32, 32) and coords.shape == (1, 3, 2)


def test_classification_and_attention_pool_mask():
    head = ClassificationHead(16, 5)
    assert head(torch.randn(3, 16), torch.randn(3, 10, 16)).shape == (3, 5)
    pool = AttentionPool(8)
    x = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pooled, w = pool(x, mask)
    assert pooled.shape == (2, 8) and torch.allclose(w.sum(-1), torch.ones(2))
    assert (w[0, 2:] == 0).all()
    # padding content must not change the pooled result
    x2 = x.clone()
    x2[0, 2:] = 1e3
    assert torch.allclose(pool(x2, mask)[0][0], pooled[0])


def test_study_classifier_on_features_alone_can_be_logistic_regression():
    from cmrfm.tasks.kinds import StudyClassifier

    features = torch.randn(6, 12)
    mask = torch.ones(6, 1, dtype=torch.bool)
    mlp = StudyClassifier(0, 5, num_features=12)
    logistic = StudyClassifier(0, 5, num_features=12, feature_hidden=0)
    assert mlp.fc.in_features == 64 and logistic.fc.in_features == 12
    linear_layers = [m for m in logistic.modules() if isinstance(m, torch.nn.Linear)]
    assert linear_layers == [logistic.fc]  # normalisation, then one linear map: logistic regression
    logits, weights = logistic.eval()(None, mask, features)
    assert logits.shape == (6, 5) and torch.allclose(weights, torch.ones(6, 1))
    with pytest.raises(ValueError, match="needs image embeddings, features or both"):
        StudyClassifier(0, 5, num_features=0)

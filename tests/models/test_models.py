"""The KDE layer, the UCC model and the model factory."""

from __future__ import annotations

import math

import pytest
import torch

from pathoucc.config import ModelConfig
from pathoucc.models import KDE, create_model


def test_kde_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    features = torch.rand(3, 5, 2)
    kde = KDE(num_bins=11, sigma=0.1)
    out = kde(features).view(3, 2, 11)
    bins = torch.linspace(0, 1, 11)
    for b in range(3):
        for j in range(2):
            dens = torch.stack([torch.exp(-((features[b, :, j] - v) ** 2) / (2 * 0.01)).mean() for v in bins])
            torch.testing.assert_close(out[b, j], dens / dens.sum())


def test_kde_separates_tight_from_spread_bags() -> None:
    kde = KDE(11, 0.1)
    tight = kde(torch.full((1, 8, 1), 0.5))
    spread = kde(torch.linspace(0, 1, 8).view(1, 8, 1))
    assert tight.argmax() == 5 and tight.max() > 2 * spread.max()


def test_masked_kde_equals_the_unpadded_bag() -> None:
    """A bag padded to the batch's largest size gives exactly the KDE of its real members."""
    torch.manual_seed(0)
    small, large = torch.rand(1, 7, 5), torch.rand(1, 1000, 5)
    padded = torch.cat([torch.cat([small, torch.rand(1, 993, 5)], 1), large])
    mask = torch.zeros(2, 1000, dtype=torch.bool)
    mask[0, :7], mask[1] = True, True
    kde = KDE(11, 0.1)
    out = kde(padded, mask)
    torch.testing.assert_close(out[0], kde(small)[0])
    torch.testing.assert_close(out[1], kde(large)[0])


def test_shared_instances_and_chunked_encoding_match_separate_bags() -> None:
    """Bags indexing shared instances, encoded in checkpointed chunks, give the logits and gradients of the same
    bags encoded whole (eval-mode batch norm, so chunks see the same statistics)."""
    torch.manual_seed(0)
    cfg = ModelConfig(widths=[4, 8, 16], num_features=6, mlp=[12], decoder=False)
    model = create_model(cfg, num_ucc=3).eval()
    x = torch.rand(12, 1, 28, 28)
    members = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [6, 7, 8, 11]])
    grads = []
    for chunk in (0, 5):
        model.zero_grad()
        with torch.enable_grad():
            model.train(False)
            model.training = True  # checkpointing path, without batch-statistics differences
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                    m.eval()
            logits = model(x, members, chunk=chunk)["logits"]
            logits.sum().backward()
        grads.append((logits.detach(), model.head.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    separate = torch.cat([model(x[m], torch.arange(4)[None])["logits"] for m in members]).detach()
    torch.testing.assert_close(grads[0][0], separate, rtol=1e-4, atol=1e-5)


def test_kde_gradients_flow() -> None:
    features = torch.rand(2, 4, 3, requires_grad=True)
    KDE()(features)[:, 0].sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", ["conv", "resnet"])
def test_ucc_model_shapes(backbone: str) -> None:
    cfg = ModelConfig(backbone=backbone, widths=[4, 8, 16], num_features=6, mlp=[12], decoder_widths=[8, 4])
    model = create_model(cfg, num_ucc=4).eval()
    out = model(torch.rand(10, 1, 28, 28), torch.arange(10).view(2, 5))
    assert out["logits"].shape == (2, 4)
    assert out["features"].shape == (10, 6)
    assert out["features"].min() >= 0 and out["features"].max() <= 1
    assert out["recon"].shape == (10, 1, 28, 28)


def test_timm_backbone_rgb() -> None:
    cfg = ModelConfig(backbone="resnet18", in_chans=3, input_size=32, num_features=8, decoder_widths=[16, 8])
    model = create_model(cfg, num_ucc=2).eval()
    out = model(torch.rand(3, 3, 32, 32), torch.arange(3).view(1, 3))
    assert out["logits"].shape == (1, 2) and out["recon"].shape == (3, 3, 32, 32)


def test_timm_local_weights(tmp_path) -> None:
    import timm

    from pathoucc.errors import PathouccError

    source = timm.create_model("resnet18", num_classes=0)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    cfg = ModelConfig(backbone="resnet18", in_chans=3, input_size=32, pretrained_file=str(tmp_path / "w.pth"))
    model = create_model(cfg, num_ucc=2)
    torch.testing.assert_close(model.encoder.model.conv1.weight, source.conv1.weight)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PathouccError, match=r"bad\.pth"):
        create_model(cfg.model_copy(update={"pretrained_file": str(tmp_path / "bad.pth")}), 2)


def test_unknown_timm_model_is_a_clear_error() -> None:
    from pathoucc.errors import PathouccError

    with pytest.raises(PathouccError, match="no_such_net"):
        create_model(ModelConfig(backbone="no_such_net"), 2)


def test_kde_max_pool_sees_a_single_outlier_and_respects_the_mask() -> None:
    """mean+max: one member of 100 far from the rest moves its bin's max to 1 (the mean barely); padding is
    ignored, so the padded bag gives its unpadded output."""
    kde = KDE(11, 0.1, pool="mean+max")
    bag = torch.full((1, 100, 1), 0.2)
    bag[0, 0, 0] = 0.9
    out = kde(bag).view(2, 11)
    assert out[1, 9].item() == pytest.approx(1.0) and out[1, 2].item() == pytest.approx(1.0)
    assert out[0, 9] < 0.02 and out[1, 5].item() == pytest.approx(math.exp(-4.5), rel=1e-4)
    padded = torch.cat([bag, torch.full((1, 20, 1), 0.5)], 1)
    mask = torch.zeros(1, 120, dtype=torch.bool)
    mask[0, :100] = True
    torch.testing.assert_close(kde(padded, mask), kde(bag))
    with pytest.raises(ValueError, match="pool"):
        KDE(11, 0.1, pool="median")


def test_kde_pool_widens_the_classifier_input() -> None:
    model = create_model(ModelConfig(widths=[4, 8, 16], num_features=6, mlp=[12], decoder=False,
                                     kde_pool="mean+max"), num_ucc=3)
    assert model.classifier[0].in_features == 2 * 6 * 11
    out = model(torch.rand(8, 1, 28, 28), torch.arange(8).view(2, 4))
    assert out["logits"].shape == (2, 3)

"""The UCC head on feature vectors: the factory's ``mlp`` projection (no image encoder), its decoder, and the
config rules that go with a feature source."""

from __future__ import annotations

import pytest
import torch

from pathoucc.config import config_from_dict
from pathoucc.data.loader import to_model_input
from pathoucc.errors import PathouccError
from pathoucc.models import UCCModel, create_model, input_shape
from pathoucc.models.decoder import FeatureDecoder
from pathoucc.models.encoders import FeatureProjection


def _model_cfg(**model):
    raw = {"data": {"source": "features"}, "model": {"backbone": "mlp", "input_dim": 24, "widths": [32, 16],
                                                     "num_features": 5, "mlp": [8]} | model}
    return config_from_dict(raw).model


def test_factory_picks_the_projection() -> None:
    cfg = _model_cfg()
    model = create_model(cfg, num_ucc=3)
    assert isinstance(model, UCCModel) and isinstance(model.encoder, FeatureProjection)
    assert isinstance(model.decoder, FeatureDecoder) and input_shape(cfg) == (24,)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert [m.out_features for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)] == [32, 16]
    x = torch.randn(10, 24)
    members = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0]])
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    with torch.no_grad():
        out = model(x, members, mask)
    assert out["logits"].shape == (2, 3) and out["features"].shape == (10, 5)
    assert out["recon"].shape == (10, 24)  # the autoencoder branch reconstructs the input feature vector
    assert float(out["features"].min()) >= 0 and float(out["features"].max()) <= 1
    # one vector's projection does not depend on the others in its batch (LayerNorm, not BatchNorm)
    model.train()
    torch.testing.assert_close(model.extract_features(x)[:3], model.extract_features(x[:3]))


def test_model_input_keeps_feature_vectors() -> None:
    rows = torch.randn(4, 24)
    assert torch.equal(to_model_input(rows, "cpu"), rows)
    pixels = torch.full((2, 3, 3, 1), 255, dtype=torch.uint8)
    assert to_model_input(pixels, "cpu").shape == (2, 1, 3, 3) and float(to_model_input(pixels, "cpu").max()) == 1


def test_no_decoder_and_unset_dimension() -> None:
    assert create_model(_model_cfg(decoder=False), 2).decoder is None
    with pytest.raises(PathouccError, match=r"model\.input_dim is unset"):
        create_model(_model_cfg(input_dim=None), 2)


@pytest.mark.parametrize(("raw", "needle"), [
    ({"data": {"source": "features"}}, "data.source features and model.backbone mlp go together"),
    ({"model": {"backbone": "mlp"}}, "go together"),
    ({"data": {"source": "features", "augment": [{"name": "HorizontalFlip"}]}, "model": {"backbone": "mlp"}},
     "feature vectors take none"),
])
def test_config_rules(raw, needle) -> None:
    with pytest.raises(PathouccError, match=needle):
        config_from_dict(raw)
    ok = config_from_dict({"data": {"source": "features"}, "model": {"backbone": "mlp"}, "refine": {"steps": 5}})
    assert ok.refine.steps == 5  # feature files have count regions: they refine

"""SeCuNetwork (models/network.py): construction, its arguments' checks and PIL inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import tiny_digit_model
from PIL import Image

from secu_plugin.models import SeCuModel

# ---------------------------------------------------------------------- construction


def test_attributes_and_shapes():
    model = tiny_digit_model(predictor_hidden_dim=32)
    assert model.backbone.num_features == model.feature_dim == 64
    assert [tuple(c.shape) for c in model.centers] == [(10, 16), (5, 16)]
    for centers in model.centers:
        torch.testing.assert_close(centers.norm(dim=1), torch.ones(len(centers)))
    x = torch.randn(3, 1, 28, 28)
    assert model.embed(x).shape == (3, 64)
    assert model(x).shape == (3, 16)
    assert model.predictor(model(x)).shape == (3, 16)
    assert tiny_digit_model().predictor is None


def test_three_layer_projection_head_matches_imagenet_layout():
    model = tiny_digit_model(projection_layers=3, projection_hidden_dim=24)
    kinds = [type(layer).__name__ for layer in model.projection_head]
    assert kinds == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
    ]
    assert model.projection_head[0].out_features == 24
    assert model.projection_head[7].num_features == 16


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_clusters": []}, "num_clusters"),
        ({"num_clusters": [10, 1]}, "num_clusters"),
        ({"num_clusters": 10}, "num_clusters"),
        ({"mean": [0.1, 0.2, 0.3]}, "mean must have 1 or 1 values"),
        ({"std": [0.0]}, "std must be positive"),
        ({"temperature": 0.0}, "temperature"),
        ({"projection_layers": 4}, "projection_layers"),
        ({"dim": 0}, "dim"),
        ({"backbone_kwargs": {"widths": (8, 16, 32)}}, "backbone_kwargs"),
        ({"results": {"seen": {1, 2}}}, "results"),
        ({"training": {"epochs": float("nan")}}, "training"),
        ({"results": [1, 2]}, "results must be a dict"),
        ({"results": {"dataset": "Toy", "split": "test"}}, r"lacks \['num_clusters'"),
    ],
)
def test_bad_arguments_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_digit_model(**overrides)


# ---------------------------------------------------------------------- PIL inputs


def test_predict_on_pil_images_of_any_size_and_mode():
    model = tiny_digit_model()
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    images = [
        grey,
        grey.resize((57, 41)),
        Image.fromarray(rng.integers(0, 256, (30, 22, 3), dtype=np.uint8)),  # RGB
        Image.fromarray(rng.integers(0, 256, (19, 64, 4), dtype=np.uint8)),  # RGBA
        grey.convert("P"),
        Image.fromarray(rng.integers(0, 65536, (33, 33), dtype=np.uint16)),  # 16-bit grey
    ]
    ids, confidence = model.predict(images, head=1)
    assert ids.shape == confidence.shape == (len(images),)
    assert ((0 <= ids) & (ids < 5)).all()
    assert ((0 < confidence) & (confidence <= 1)).all()
    # PIL inputs go through preprocess: the same as passing the preprocessed batch.
    batch = model.preprocess(images)
    assert batch.shape == (len(images), 1, 28, 28)
    ids_tensor, confidence_tensor = model.predict(batch, head=1)
    assert torch.equal(ids, ids_tensor)
    torch.testing.assert_close(confidence, confidence_tensor)
    # A single image works too, and a 28x28 grey digit is only normalized.
    expected = (torch.from_numpy(np.array(grey)).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(model.preprocess(grey)[0, 0], expected)


def test_rgb_model_accepts_grey_images():
    model = SeCuModel(backbone="secu_convnet_tiny", input_size=32, dim=8, num_clusters=[3]).eval()
    batch = model.preprocess([Image.new("L", (40, 50), 128), Image.new("RGBA", (8, 8))])
    assert batch.shape == (2, 3, 32, 32)
    assert model.config["mean"] == [0.1307] * 3  # the backbone's statistic, per channel
    ids, _ = model.predict([Image.new("L", (40, 50), 128)])
    assert ids.shape == (1,)

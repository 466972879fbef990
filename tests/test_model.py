"""SeCuModel: construction, prediction, save/load round trip and import of official checkpoints."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from factories import tiny_digit_model
from huggingface_hub import ModelCard
from PIL import Image
from torch import nn

from secu_plugin.models import PretrainedModelNotFoundError, SeCuModel
from secu_plugin.models.reference import load_reference_training_state

SMALL_RESNET = {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]}


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine weights, so that eval-mode outputs test them."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                layer.running_mean.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)
                layer.running_var.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
                layer.weight.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
                layer.bias.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)


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


# ---------------------------------------------------------------------- prediction


def test_predict_matches_softmax_over_normalized_centers():
    model = tiny_digit_model()
    x = torch.randn(6, 1, 28, 28)
    for head in range(model.num_heads):
        ids, confidence = model.predict(x, head=head)
        with torch.no_grad():
            z = F.normalize(model(x), dim=1)
            logits = z @ F.normalize(model.centers[head], dim=1).T / model.temperature
        expected_confidence, expected_ids = logits.softmax(dim=1).max(dim=1)
        assert ids.dtype == torch.int64 and ids.shape == (6,)
        assert torch.equal(ids, expected_ids)
        torch.testing.assert_close(confidence, expected_confidence)
        assert ((0 <= ids) & (ids < model.num_clusters[head])).all()


def test_predict_runs_in_eval_mode_without_gradients_and_restores_mode():
    model = tiny_digit_model()
    x = torch.randn(4, 1, 28, 28)
    model.train()
    ids_after_train, confidence = model.predict(x)
    assert model.training  # restored
    assert not confidence.requires_grad
    model.eval()
    ids_eval, _ = model.predict(x)
    assert torch.equal(ids_after_train, ids_eval)  # BN used its running statistics both times
    for centers in model.centers:
        assert centers.grad is None


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


@pytest.mark.parametrize(
    ("images", "head", "message"),
    [
        (torch.randn(2, 3, 28, 28), 0, "images must be a"),
        (torch.randn(1, 28, 28), 0, "images must be a"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), 0, "floating point"),
        (torch.randn(2, 1, 28, 28), 2, "head must be an index"),
        (torch.randn(2, 1, 28, 28), -1, "head must be an index"),
        (["not an image"], 0, "PIL images"),
        ([], 0, "at least one image"),
    ],
)
def test_predict_rejects_bad_input(images, head, message):
    with pytest.raises(ValueError, match=message):
        tiny_digit_model().predict(images, head=head)


def test_head_index():
    model = tiny_digit_model()
    assert model.head_index(10) == 0
    assert model.head_index(5) == 1
    with pytest.raises(ValueError, match=r"no head has 7 clusters.*\[10, 5\]"):
        model.head_index(7)


# ---------------------------------------------------------------------- from_network


def test_from_network_takes_the_networks_weights_and_the_trained_centers():
    from secu_plugin.models import SeCuNetwork

    torch.manual_seed(0)
    network = SeCuNetwork("secu_convnet_tiny", in_chans=1, dim=16, predictor_hidden_dim=8)
    randomize_batchnorm(network)
    trained = [torch.randn(10, 16) * 3, torch.randn(5, 16, dtype=torch.float64)]
    model = SeCuModel.from_network(network, trained, temperature=0.2, training={"epochs": 1})
    torch.testing.assert_close(model.centers[0].data, trained[0])
    torch.testing.assert_close(model.centers[1].data, trained[1].float())
    assert model.centers[1].dtype == torch.float32 and model.num_clusters == [10, 5]
    assert model.config["temperature"] == 0.2 and model.training_recipe == {"epochs": 1}
    for key, value in network.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(3, 1, 28, 28)
    network.eval(), model.eval()
    assert torch.equal(network(x), model(x))
    # From a ParameterList (e.g. SeCuCenterBank.centers) too.
    model = SeCuModel.from_network(
        network, nn.ParameterList([nn.Parameter(-t.float()) for t in trained])
    )
    torch.testing.assert_close(model.centers[0].data, -trained[0])


@pytest.mark.parametrize(
    ("centers", "message"),
    [
        ([], "centers must be"),
        ([torch.randn(10, 16), torch.randn(5, 15)], "centers must be"),
        ([torch.randn(10, 16), torch.randn(5)], "centers must be"),
        ([torch.randn(10, 16), torch.full((5, 16), float("nan"))], "NaN"),
    ],
)
def test_from_network_refuses_bad_centers(centers, message):
    from secu_plugin.models import SeCuNetwork

    with pytest.raises(ValueError, match=message):
        SeCuModel.from_network(SeCuNetwork("secu_convnet_tiny", in_chans=1, dim=16), centers)


# ---------------------------------------------------------------------- save / load


def every_argument_changed() -> dict:
    """A value different from the default for every SeCuModel argument."""
    return {
        "backbone": "secu_resnet34_cifar",
        "backbone_kwargs": SMALL_RESNET,
        "in_chans": 1,
        "dim": 12,
        "projection_layers": 3,
        "projection_batchnorm": False,
        "projection_hidden_dim": 24,
        "predictor_hidden_dim": 20,
        "num_clusters": [3, 4, 6],
        "temperature": 0.1,
        "input_size": 20,
        "mean": [0.25],
        "std": [0.5],
        "results": {
            "dataset": "Toy",
            "split": "test",
            "num_clusters": 3,
            "accuracy": 0.5,
            "nmi": 0.25,
            "ari": 0.125,
            "num_images": 12,
        },
        "training": {"command": "python train.py --epochs 1", "epochs": 1, "nested": {"a": [1]}},
    }


def test_round_trip_keeps_every_init_argument_weights_and_predictions(tmp_path):
    arguments = every_argument_changed()
    parameters = dict(inspect.signature(SeCuModel.__init__).parameters)
    parameters.pop("self")
    assert set(arguments) == set(parameters), "the test must cover every init argument"
    for name, value in arguments.items():
        assert value != parameters[name].default, name

    torch.manual_seed(1)
    model = SeCuModel(**arguments)
    randomize_batchnorm(model)
    model.eval()
    assert model.config == arguments

    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((tmp_path / "saved" / "config.json").read_text()) == arguments

    loaded = SeCuModel.from_pretrained(tmp_path / "saved")
    assert loaded.config == arguments
    assert not loaded.training
    assert loaded.results == arguments["results"]
    assert loaded.training_recipe == arguments["training"]
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key in original_state:
        assert torch.equal(original_state[key], loaded_state[key]), key

    x = torch.randn(5, 1, 20, 20)
    for head in range(3):
        ids, confidence = model.predict(x, head=head)
        loaded_ids, loaded_confidence = loaded.predict(x, head=head)
        assert torch.equal(ids, loaded_ids)
        assert torch.equal(confidence, loaded_confidence)


def test_default_model_config_round_trips(tmp_path):
    model = tiny_digit_model(num_clusters=None)
    assert model.config["num_clusters"] == list(range(10, 101, 10))
    model.save_pretrained(tmp_path)
    assert SeCuModel.from_pretrained(tmp_path).config == model.config


def test_saved_card_is_ours_and_reports_only_given_results(tmp_path):
    model = tiny_digit_model()
    model.save_pretrained(tmp_path / "plain", repo_id="someone/secu-digits")
    card = ModelCard.load(tmp_path / "plain" / "README.md")
    body = card.text
    assert card.data.library_name == "secu-plugin"
    assert card.data.eval_results is None
    assert "has not been evaluated" in body
    assert 'SeCuModel.from_pretrained("someone/secu-digits")' in body

    results = {
        "dataset": "Digits",
        "split": "train",
        "num_clusters": 10,
        "accuracy": 0.875,
        "nmi": 0.75,
        "ari": 0.625,
    }
    evaluated = tiny_digit_model(results=results)
    evaluated.save_pretrained(tmp_path / "plain")  # replaces the previous card
    card = ModelCard.load(tmp_path / "plain" / "README.md")
    body = card.text
    assert [r.metric_value for r in card.data.eval_results] == [0.875, 0.75, 0.625]
    assert "| Digits | train |" in body and "87.50%" in body
    assert 'from_pretrained("path/to/saved-model")' in body
    card = evaluated.generate_model_card(repo_id="org/x")
    assert card.data.library_name == "secu-plugin"
    assert card.data.eval_results[0].metric_value == 0.875


def test_from_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(PretrainedModelNotFoundError, match="no model.safetensors"):
        (tmp_path / "config.json").write_text("{}")
        SeCuModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither an existing local directory nor a valid"):
        SeCuModel.from_pretrained(str(tmp_path / "does" / "not" / "exist"))
    model = tiny_digit_model()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["dim"] = 8
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    # Checked against the weights' header before anything is built.
    with pytest.raises(ValueError, match="does not match the weights"):
        SeCuModel.from_pretrained(tmp_path / "m")


# ---------------------------------------------------------------------- official checkpoints


class OfficialCifarBlock(nn.Module):
    """A BasicBlock laid out like the paper's nets/resnet_cifar.py (residual: ``shortcut``)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class OfficialCifarResNet18(nn.Module):
    """The paper's CIFAR ResNet-18 layout (3x3 stem, no max-pool) with configurable widths."""

    def __init__(self, widths: list[int], dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for index, width in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            blocks = [
                OfficialCifarBlock(in_planes, width, stride),
                OfficialCifarBlock(width, width, 1),
            ]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_planes = width
        self.fc = nn.Sequential(
            nn.Linear(in_planes, in_planes),
            nn.BatchNorm1d(in_planes),
            nn.ReLU(inplace=True),
            nn.Linear(in_planes, dim),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for index in range(1, 5):
            out = getattr(self, f"layer{index}")(out)
        return out.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class OfficialSeCu(nn.Module):
    """The parameters and buffers of the paper's SeCu module (secu/builder*.py), by name."""

    def __init__(
        self,
        encoder: nn.Module,
        num_clusters: list[int],
        dim: int,
        num_instances: int,
        predictor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        if predictor is not None:
            self.predictor = predictor
        for i, k in enumerate(num_clusters):
            self.register_buffer(f"assign_labels_{i}", torch.randint(0, k, (num_instances,)))
            self.register_parameter(
                f"center_{i}", nn.Parameter(F.normalize(torch.randn(dim, k), dim=0) * 1.5)
            )
            self.register_buffer(f"counter_{i}", torch.rand(k))
            self.register_buffer(f"ldual_{i}", torch.rand(k))


def save_official_checkpoint(module: nn.Module, path) -> None:
    """As the official main.py saves it: DDP's ``module.`` prefix, epoch and optimizer state."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    state = {"module." + key: value for key, value in module.state_dict().items()}
    torch.save({"epoch": 801, "state_dict": state, "optimizer": optimizer.state_dict()}, path)


def test_import_official_cifar_checkpoint_with_shortcut_naming(tmp_path):
    torch.manual_seed(0)
    widths, dim, num_clusters = [8, 16, 32, 64], 12, [3, 5]
    encoder = OfficialCifarResNet18(widths, dim)
    randomize_batchnorm(encoder)
    official = OfficialSeCu(encoder, num_clusters, dim, num_instances=20).eval()
    assert any(".shortcut." in key for key in official.state_dict())
    path = tmp_path / "cifar10_0800.pth.tar"
    save_official_checkpoint(official, path)

    model = SeCuModel.from_reference_checkpoint(
        path,
        backbone="secu_resnet18_cifar",
        backbone_kwargs={"channels": widths},
        mean=[0.4914, 0.4822, 0.4465],
        std=[0.2023, 0.1994, 0.2010],
    )
    assert model.num_clusters == num_clusters and model.dim == dim
    assert model.config["input_size"] == 32 and model.predictor is None
    assert model.config["projection_layers"] == 2
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), encoder.features(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(x), encoder(x), rtol=1e-4, atol=1e-5)
    for i, k in enumerate(num_clusters):
        assert torch.equal(model.centers[i].data, getattr(official, f"center_{i}").data.T)
        ids, _ = model.predict(x, head=i)
        with torch.no_grad():
            z = F.normalize(encoder(x), dim=1)
            expected = (z @ F.normalize(getattr(official, f"center_{i}"), dim=0)).argmax(dim=1)
        assert torch.equal(ids, expected)
        assert k == model.num_clusters[i]

    state = load_reference_training_state(path)
    assert state["epoch"] == 801
    assert torch.equal(state["assignments"][1], official.assign_labels_1)
    assert torch.equal(state["counts"][0], official.counter_0)
    assert torch.equal(state["duals"][1], official.ldual_1)

    # The imported model saves and loads like any other.
    model.save_pretrained(tmp_path / "imported")
    reloaded = SeCuModel.from_pretrained(tmp_path / "imported")
    torch.testing.assert_close(reloaded(x), model(x))


def test_import_official_imagenet_checkpoint_with_predictor_and_downsample(tmp_path):
    torch.manual_seed(0)
    dim, num_clusters = 16, [4, 6, 8]
    backbone = timm.create_model("resnet26", num_classes=0, **SMALL_RESNET)
    features = backbone.num_features
    head = nn.Sequential(
        nn.Linear(features, features),
        nn.BatchNorm1d(features),
        nn.ReLU(inplace=True),
        nn.Linear(features, features),
        nn.BatchNorm1d(features),
        nn.ReLU(inplace=True),
        nn.Linear(features, dim),
        nn.BatchNorm1d(dim),
    )
    backbone.fc = head  # torchvision naming: encoder.fc is the projection MLP
    predictor = nn.Sequential(
        nn.Linear(dim, 40), nn.BatchNorm1d(40), nn.ReLU(inplace=True), nn.Linear(40, dim)
    )
    official = OfficialSeCu(backbone, num_clusters, dim, num_instances=30, predictor=predictor)
    randomize_batchnorm(official)
    official.eval()
    assert "encoder.layer1.0.downsample.0.weight" in official.state_dict()
    path = tmp_path / "imagenet_0199.pth.tar"
    save_official_checkpoint(official, path)

    model = SeCuModel.from_reference_checkpoint(
        path, backbone="resnet26", backbone_kwargs=SMALL_RESNET
    )
    assert model.config["projection_layers"] == 3
    assert model.config["predictor_hidden_dim"] == 40
    assert model.config["num_clusters"] == num_clusters and model.config["input_size"] == 224
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), backbone(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            model.predictor(model(x)), predictor(backbone(x)), rtol=1e-4, atol=1e-5
        )
    assert torch.equal(model.centers[2].data, official.center_2.data.T)


def test_import_rejects_unknown_missing_and_inconsistent_keys(tmp_path):
    torch.manual_seed(0)
    encoder = OfficialCifarResNet18([8, 16, 32, 64], 12)
    official = OfficialSeCu(encoder, [3], 12, num_instances=5)
    state = {"module." + key: value for key, value in official.state_dict().items()}
    kwargs = {"backbone_kwargs": {"channels": [8, 16, 32, 64]}}

    unknown = dict(state, **{"module.queue": torch.zeros(3)})
    torch.save({"state_dict": unknown}, tmp_path / "unknown.pth.tar")
    with pytest.raises(ValueError, match=r"unknown keys in the SeCu checkpoint: \['queue'\]"):
        SeCuModel.from_reference_checkpoint(tmp_path / "unknown.pth.tar", **kwargs)

    missing = {k: v for k, v in state.items() if "layer2.0.conv1" not in k}
    torch.save({"state_dict": missing}, tmp_path / "missing.pth.tar")
    with pytest.raises(ValueError, match=r"missing keys \['backbone.layer2.0.conv1.weight'\]"):
        SeCuModel.from_reference_checkpoint(tmp_path / "missing.pth.tar", **kwargs)

    torch.save({"state_dict": state}, tmp_path / "ok.pth.tar")
    with pytest.raises(ValueError, match="num_clusters=.*checkpoint's heads have"):
        SeCuModel.from_reference_checkpoint(tmp_path / "ok.pth.tar", num_clusters=[10], **kwargs)
    with pytest.raises(ValueError, match="dim=7 but the checkpoint has 12"):
        SeCuModel.from_reference_checkpoint(tmp_path / "ok.pth.tar", dim=7, **kwargs)
    with pytest.raises(ValueError, match="does not match SeCuModel"):  # other widths
        SeCuModel.from_reference_checkpoint(tmp_path / "ok.pth.tar")
    with pytest.raises(ValueError, match="does not exist"):
        SeCuModel.from_reference_checkpoint(tmp_path / "nope.pth.tar")
    no_centers = {k: v for k, v in state.items() if "center_" not in k}
    torch.save({"state_dict": no_centers}, tmp_path / "no_centers.pth.tar")
    with pytest.raises(ValueError, match="not a SeCu checkpoint"):
        SeCuModel.from_reference_checkpoint(tmp_path / "no_centers.pth.tar", **kwargs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": 1_000_000_000_000}, "does not match the weights"),
        ({"num_clusters": [10_000_000_000, 5]}, "does not match the weights"),
        ({"num_clusters": [10, 5, 7]}, "the weights hold 2 heads"),
        ({"backbone_kwargs": {"pretrained": True}}, "key 'pretrained' is not allowed"),
        ({"backbone_kwargs": {"checkpoint_path": "/etc/passwd"}}, "'checkpoint_path' is not"),
        ({"backbone_kwargs": {"pretrained_cfg_overlay": {"url": "http://x"}}}, "not allowed"),
        ({"backbone_kwargs": {"drop_rate": {"nested": 1}}}, "JSON scalar"),
        ({"backbone": "hf-hub:someone/model"}, "unknown timm model"),
        ({"backbone": "local-dir:/etc"}, "unknown timm model"),
    ],
)
def test_a_hostile_config_is_refused_before_anything_is_allocated(tmp_path, change, message):
    import resource
    import time

    tiny_digit_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        SeCuModel.from_pretrained(tmp_path)
    assert time.perf_counter() - started < 10
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 200_000  # nowhere near what the config asked for


def test_from_modules_turns_a_lightly_swav_encoder_into_a_secu_model(tmp_path):
    """A timm backbone + lightly's SwaVProjectionHead (first Linear without bias) and
    SwaVPrototypes: the SeCuModel predicts the prototype that SwaV scores highest, also after
    a save/load round trip; a non-timm backbone is refused."""
    import timm
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", num_classes=0).eval()
    head = SwaVProjectionHead(backbone.num_features, 32, 16).eval()
    prototypes = SwaVPrototypes(16, n_prototypes=[7, 12])
    model = SeCuModel.from_modules(backbone, head, prototypes, input_size=32)
    model.save_pretrained(tmp_path / "swav")
    loaded = SeCuModel.from_pretrained(tmp_path / "swav").eval()
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        z = torch.nn.functional.normalize(head(backbone(images)), dim=1)
        for index, prototype in enumerate(prototypes.heads):
            scores = z @ torch.nn.functional.normalize(prototype.weight, dim=1).T
            ids, _ = loaded.predict(images, head=index)
            assert torch.equal(ids, scores.argmax(1))
    with pytest.raises(ValueError, match="not a timm model"):
        SeCuModel.from_modules(torch.nn.Conv2d(3, 8, 3), head, prototypes)

"""Import of the official SeCu code's checkpoints (models/reference.py)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from factories import SMALL_RESNET, randomize_batchnorm
from torch import nn

from secu_plugin.models import SeCuModel
from secu_plugin.models.reference import load_reference_training_state

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

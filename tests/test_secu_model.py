"""SeCuModel (models/secu_model.py, hub.py, modules.py): prediction, from_network, the
save/load round trip, untrusted configs and from_modules."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from factories import SMALL_RESNET, randomize_batchnorm, tiny_digit_model
from huggingface_hub import ModelCard
from torch import nn

from secu_plugin.models import PretrainedModelNotFoundError, SeCuModel

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
        "input_norm": "instance",
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


# ---------------------------------------------------------------------- untrusted configs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dim": 1_000_000_000_000}, "does not match the weights"),
        ({"num_clusters": [10_000_000_000, 5]}, "does not match the weights"),
        ({"num_clusters": [10, 5, 7]}, "the weights hold 2 heads"),
        # Every other size is refused before the model is built: too large for the weights ...
        ({"projection_hidden_dim": 10**12}, "projection_hidden_dim=1000000000000 is larger"),
        ({"predictor_hidden_dim": 10**12}, "predictor_hidden_dim=1000000000000 is larger"),
        ({"in_chans": 10**12}, "in_chans=1000000000000 is larger"),
        ({"input_size": 10**12}, "input_size=1000000000000 is larger"),
        ({"projection_layers": 10**12}, "projection_layers=1000000000000 is larger"),
        ({"backbone_kwargs": {"widths": [16, 32, 10**12]}}, r"\['widths'\]=1000000000000 is"),
        # ... or of another shape than the weights (the model built on the meta device).
        ({"projection_hidden_dim": 32}, r"wrong shapes \['projection_head.0.bias"),
        ({"predictor_hidden_dim": 8}, r"missing \['predictor.0.bias"),
        ({"in_chans": 3, "mean": [0.5], "std": [0.5]}, r"wrong shapes \['backbone"),
        ({"projection_layers": 3}, "does not match the weights"),
        ({"backbone_kwargs": {"widths": [16, 32, 48]}}, "wrong shapes"),
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


def test_strict_false_adds_no_tensor_larger_than_the_weights(tmp_path):
    """``strict=False`` leaves the tensors the weights lack at their initial values, but a
    config cannot make them larger than the whole weights file."""
    import resource

    tiny_digit_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "predictor_hidden_dim": 30000}))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="more than the whole weights file"):
        SeCuModel.from_pretrained(tmp_path, strict=False)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200_000
    (tmp_path / "config.json").write_text(json.dumps({**config, "predictor_hidden_dim": 8}))
    assert SeCuModel.from_pretrained(tmp_path, strict=False).predictor[0].out_features == 8


# ---------------------------------------------------------------------- from_modules


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

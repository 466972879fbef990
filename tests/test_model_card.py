"""The model card: renders from model_cards/template.md, valid Hub metadata, only given results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from secu_plugin.models import SeCuModel
from secu_plugin.models.card import find_template, model_card

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "backbone": "secu_resnet18_cifar",
    "backbone_kwargs": None,
    "in_chans": 3,
    "dim": 128,
    "projection_layers": 2,
    "projection_hidden_dim": None,
    "predictor_hidden_dim": None,
    "num_clusters": [10, 20, 30],
    "temperature": 0.05,
    "input_size": 32,
    "mean": [0.4914, 0.4822, 0.4465],
    "std": [0.2023, 0.1994, 0.201],
    "results": None,
    "training": None,
}
RESULT = {
    "dataset": "CIFAR-10",
    "dataset_id": "uoft-cs/cifar10",
    "split": "train",
    "num_clusters": 10,
    "accuracy": 0.123456789,
    "nmi": 0.0987654321,
    "ari": -0.0123,
    "num_images": 50000,
}
PERCENT_FIGURE = re.compile(r"\d+\.\d+\s*%")
# The metadata the Hub mixin gives every SeCuModel card (library, license, tags).
MIXIN_DATA = super(SeCuModel, SeCuModel("secu_convnet_tiny", in_chans=1)).generate_model_card().data


def render_model_card(config, results, training, repo_id) -> str:
    return str(model_card(MIXIN_DATA, {**config, "results": results, "training": training},
                          repo_id))  # fmt: skip


def parse_model_card(text: str) -> tuple[dict, str]:
    """The metadata (huggingface_hub's parse) and the body of a card."""
    card = ModelCard(text)
    return card.data.to_dict(), card.text


def metric_values(metadata: dict) -> list[list[float]]:
    return [
        [metric["value"] for metric in result["metrics"]]
        for result in metadata["model-index"][0]["results"]
    ]


def evaluation_section(body: str) -> str:
    return body.split("## Evaluation", 1)[1].split("\n## ", 1)[0]


def test_template_is_the_one_in_model_cards():
    assert find_template() == REPO_ROOT / "model_cards" / "template.md"


def test_card_metadata_is_valid_hub_yaml():
    card = render_model_card(CONFIG, RESULT, {"command": "secu-train"}, "org/secu-cifar10")
    assert card.startswith("---\n")
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["library_name"] == "secu-plugin"
    assert metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == "image-feature-extraction"
    # Ours and the mixin's own tags.
    assert set(metadata["tags"]) == {"secu", "deep-clustering", "image-clustering",
                                     "self-supervised", "timm", "model_hub_mixin",
                                     "pytorch_model_hub_mixin"}  # fmt: skip
    assert metadata["metrics"] == ["accuracy", "nmi", "ari"]
    assert metadata["datasets"] == ["uoft-cs/cifar10"]
    # huggingface_hub's own parser reads the model-index.
    parsed = ModelCard(card)
    assert parsed.data.library_name == "secu-plugin"
    assert [(r.metric_type, r.metric_value) for r in parsed.data.eval_results] == [
        ("accuracy", RESULT["accuracy"]),
        ("nmi", RESULT["nmi"]),
        ("ari", RESULT["ari"]),
    ]
    assert parsed.data.eval_results[0].dataset_split == "train"
    assert parsed.data.eval_results[0].dataset_type == "uoft-cs/cifar10"


def test_results_in_the_card_are_exactly_the_given_ones():
    second = dict(
        RESULT,
        dataset="CIFAR-10 test",
        split="test",
        accuracy=0.5,
        nmi=0.25,
        ari=0.75,
        assignment="predict",
        notes="Scored with model.predict on the test split.",
    )
    card = render_model_card(CONFIG, {"evaluations": [RESULT, second]}, None, "org/m")
    metadata, body = parse_model_card(card)
    assert metric_values(metadata) == [
        [RESULT["accuracy"], RESULT["nmi"], RESULT["ari"]],
        [0.5, 0.25, 0.75],
    ]
    # Same split, one scored from the memory and one by the model: still two results.
    same_split = dict(second, split="train")
    parsed = ModelCard(
        render_model_card(CONFIG, {"evaluations": [RESULT, same_split]}, None, "o/m")
    )
    assert [(r.task_type, r.dataset_split, r.metric_type, r.metric_value)
            for r in parsed.data.eval_results] == [
        ("transductive-image-clustering", "train", "accuracy", RESULT["accuracy"]),
        ("transductive-image-clustering", "train", "nmi", RESULT["nmi"]),
        ("transductive-image-clustering", "train", "ari", RESULT["ari"]),
        ("image-clustering", "train", "accuracy", 0.5),
        ("image-clustering", "train", "nmi", 0.25),
        ("image-clustering", "train", "ari", 0.75),
    ]  # fmt: skip
    assert len(yaml.safe_load(str(parsed).split("---\n")[1])["model-index"][0]["results"]) == 2
    section = evaluation_section(body)
    assert (
        "| CIFAR-10 | train | 50000 | 10 | training memory | 12.35% | 9.88% | -1.23% |" in section
    )
    assert (
        "| CIFAR-10 test | test | 50000 | 10 | nearest center (model.predict) | 50.00% |" in section
    )
    assert "Scored with model.predict on the test split." in section
    assert sorted(PERCENT_FIGURE.findall(section)) == sorted(
        ["12.35%", "9.88%", "1.23%", "50.00%", "25.00%", "75.00%"]
    )
    assert "has not been evaluated" not in body


def test_without_results_the_card_claims_no_figure():
    card = render_model_card(CONFIG, None, None, None)
    metadata, body = parse_model_card(card)
    assert metadata.get("model-index") is None and metadata.get("eval_results") is None
    assert metadata.get("datasets") is None
    section = evaluation_section(body)
    assert "has not been evaluated" in section
    assert PERCENT_FIGURE.findall(body) == []
    assert "The training procedure of this model was not recorded." in body
    assert 'SeCuModel.from_pretrained("path/to/saved-model")' in body


def test_card_sections_and_training_recipe():
    training = {
        "command": ["secu-train", "--data", "my images", "--epochs", "3"],
        "dataset": "my photo folder",
        "dataset_id": "me/photos",
        "epochs": 3,
        "hardware": "1 CPU core",
    }
    card = render_model_card(CONFIG, None, training, "org/secu-photos")
    metadata, body = parse_model_card(card)
    assert metadata["datasets"] == ["me/photos"]
    for heading in [
        "## Model description",
        "## Intended uses & limitations",
        "## How to use",
        "## Training data and procedure",
        "## Evaluation",
        "## Limitations",
        "## Citation",
    ]:
        assert heading in body
    assert "secu-train --data 'my images' --epochs 3" in body
    assert "Trained on my photo folder, without its labels." in body
    assert "- **epochs**: `3`" in body and "- **hardware**: 1 CPU core" in body
    assert 'SeCuModel.from_pretrained("org/secu-photos")' in body
    assert "model.head_index(10)" in body
    assert "Stable Cluster Discrimination for Deep Clustering" in body
    assert "author    = {Qian, Qi}" in body and "ICCV" in body
    assert "| Clustering heads (K) | 10, 20, 30 |" in body


def test_strings_with_yaml_syntax_stay_valid():
    result = dict(RESULT, dataset='a: "tricky" #name', dataset_id="org/with: colon")
    card = ModelCard(render_model_card(CONFIG, result, None, "o/n"))
    assert card.data.eval_results[0].dataset_name == 'a: "tricky" #name'
    assert card.data.eval_results[0].dataset_type == "org/with: colon"


def test_a_local_folder_never_becomes_the_dataset_type():
    card = ModelCard(render_model_card(CONFIG, dict(RESULT, dataset="/home/me/My Photos",
                                                    dataset_id=None), None, "o/n"))  # fmt: skip
    assert card.data.eval_results[0].dataset_type == "home-me-my-photos"
    assert card.data.datasets is None


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (dict(RESULT, accuracy=97.3), "accuracy must be a number in"),
        (dict(RESULT, nmi=float("nan")), "nmi must be a number"),
        (dict(RESULT, ari=True), "ari must be a number"),
        ({k: v for k, v in RESULT.items() if k != "split"}, r"lacks \['split'\]"),
        (dict(RESULT, num_clusters=1), "num_clusters must be an int >= 2"),
        ({"evaluations": []}, "non-empty list"),
        ([RESULT], "results must be a dict"),
    ],
)
def test_malformed_results_raise_value_error(results, message):
    with pytest.raises(ValueError, match=message):
        render_model_card(CONFIG, results, None, None)


def test_malformed_config_or_training_raise_value_error():
    with pytest.raises(ValueError, match="config lacks"):
        render_model_card({"backbone": "secu_resnet18_cifar"}, None, None, None)
    with pytest.raises(ValueError, match="command"):
        render_model_card(CONFIG, None, {"command": 3}, None)
    with pytest.raises(ValueError, match="repo_id"):
        render_model_card(CONFIG, None, None, "")


def test_published_mnist5k_card_reports_the_measured_run():
    """The card in model_cards/ was written by the demo run whose results.json is in docs/:
    every figure in it is one that run measured."""
    import json

    text = (REPO_ROOT / "model_cards" / "secu-mnist5k.md").read_text(encoding="utf-8")
    card = ModelCard(text)
    body = card.text
    assert card.data.library_name == "secu-plugin"
    measured = json.loads((REPO_ROOT / "docs" / "mnist5k_results.json").read_text())
    reported = sorted((r.metric_type, r.metric_value) for r in card.data.eval_results)
    expected = sorted(
        (k, e[k]) for e in measured["evaluations"] for k in ("accuracy", "nmi", "ari")
    )
    assert reported == expected
    assert "has not been evaluated" not in evaluation_section(body)
    first = measured["evaluations"][0]["accuracy"]
    assert f"{100 * first:.2f}%" in evaluation_section(body)

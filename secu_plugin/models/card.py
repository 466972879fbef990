"""Model cards of SeCu models: huggingface_hub's metadata and model-index, our template's body.

:func:`model_card` is a pure function of a model's config (with its measured results and its
training recipe); :meth:`secu_plugin.SeCuModel.save_pretrained` writes it as the repository's
``README.md``, and ``huggingface_hub.ModelCard`` reads it back. The card only reports the results it is given: without results it
says that the model has not been evaluated.

``results`` is one evaluation, or ``{"evaluations": [one, ...]}``; an evaluation is::

    {
        "dataset": "MNIST-5k",        # name shown in the card (required)
        "split": "train",             # evaluation split (required)
        "num_clusters": 10,           # K of the evaluated head (required)
        "accuracy": 0.97,             # clustering accuracy, in [0, 1] (required)
        "nmi": 0.93,                  # normalized mutual information, in [0, 1] (required)
        "ari": 0.94,                  # adjusted Rand index, in [-1, 1] (required)
        "dataset_id": "ylecun/mnist", # Hub dataset id (optional; listed in `datasets:`)
        "num_images": 5000,           # images scored (optional)
        "assignment": "memory",       # "memory" (the training memory's assignment, default),
                                      # "predict" (model.predict) or any description
        "notes": "...",               # a sentence printed under the table (optional)
    }

``training`` is free-form JSON; ``command`` (a string or a list of arguments) is printed as a
code block, ``dataset`` names the training data, ``dataset_id`` is listed in ``datasets:``, and
any other key is listed as it is.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from secu_plugin.model_selection import recorded_recommendation

TEMPLATE_NAME = "template.md"
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "nmi": (0.0, 1.0),
    "ari": (-1.0, 1.0),
}
ASSIGNMENT_DESCRIPTIONS: dict[str, str] = {
    "memory": "training memory",
    "predict": "nearest center (model.predict)",
}
# The model-index task of each assignment: distinct, so that huggingface_hub's parser keeps
# the nearest-center and the training-memory results of one split apart.
TASK_TYPES: dict[str, str] = {
    "predict": "image-clustering",
    "memory": "transductive-image-clustering",
}
METRIC_NAMES: dict[str, str] = {
    "accuracy": "Clustering accuracy (ACC)",
    "nmi": "Normalized mutual information (NMI)",
    "ari": "Adjusted Rand index (ARI)",
}
# Training keys with a place of their own in the card.
_TRAINING_SPECIAL_KEYS = ("command", "dataset", "dataset_id", "k_selection")


def find_template() -> Path:
    """The path of ``template.md``: inside the installed package or in the source checkout.

    Examples:
        >>> find_template().name
        'template.md'
    """
    package = Path(__file__).resolve().parents[1]
    candidates = (
        package / "model_cards" / TEMPLATE_NAME,  # installed: shipped as secu_plugin/model_cards/
        package.parent / "model_cards" / TEMPLATE_NAME,  # source checkout / editable install
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"model card template not found; looked at {[str(c) for c in candidates]}"
    )


def model_card(
    card_data: ModelCardData | None,
    config: dict,
    repo_id: str | None = None,
    *,
    model_name: str | None = None,
    template: str | None = None,
) -> ModelCard:
    """The model card (Hub README.md) of a SeCu model.

    The metadata is huggingface_hub's: ``card_data`` (the mixin's library name, license,
    pipeline tag and tags) completed with ``datasets`` and the measured results as
    ``EvalResult`` entries, which huggingface_hub writes as the model-index and parses back.
    The body is ``model_cards/template.md``.

    Args:
        card_data: Metadata to start from (``SeCuModel`` passes the mixin's); None: empty.
        config: The model's config (``SeCuModel.config``: backbone, num_clusters, results,
            training, ...). Without ``results`` the card says the model was not evaluated and
            reports no figure.
        repo_id: The Hub repository id used in the usage snippets; None: a local path.
        model_name: The card's title; default: the repository name, else ``secu-<backbone>``.
        template: Jinja2 template text; default: ``model_cards/template.md``.

    Raises:
        ValueError: ``results`` or ``training`` is malformed (the message names the field).

    Examples:
        >>> config = {"backbone": "secu_resnet18_cifar", "in_chans": 3, "dim": 128,
        ...           "num_clusters": [10, 20], "input_size": 32, "mean": [0.5, 0.5, 0.5],
        ...           "std": [0.25, 0.25, 0.25], "results": {"dataset": "CIFAR-10",
        ...           "split": "train", "num_clusters": 10, "accuracy": 0.5, "nmi": 0.4,
        ...           "ari": 0.3}}
        >>> card = model_card(None, config, repo_id="me/secu")
        >>> result = ModelCard(str(card)).data.eval_results[0]
        >>> result.metric_type, result.metric_value, result.dataset_split
        ('accuracy', 0.5, 'train')
        >>> "| CIFAR-10 | train |" in card.text
        True
    """
    import jinja2

    config = _check_config(config)
    evaluations = _evaluations(config.get("results"))
    training = config.get("training")
    if training is not None and not isinstance(training, dict):
        raise ValueError(f"training must be a dict or None, not {type(training).__name__}")
    training = training or {}
    command = training.get("command")
    if command is not None and not (
        isinstance(command, str)
        or (isinstance(command, list) and all(isinstance(arg, str) for arg in command))
    ):
        raise ValueError(f"training['command'] must be a string or a list of strings: {command!r}")
    # The head the run recommends (secu_plugin.model_selection), checked against the heads.
    recommended = recorded_recommendation(training, list(config["num_clusters"]))
    if repo_id is not None and (not isinstance(repo_id, str) or not repo_id.strip()):
        raise ValueError(f"repo_id must be a non-empty string or None, got {repo_id!r}")

    datasets: list[str] = []
    for dataset_id in [training.get("dataset_id")] + [e["dataset_id_given"] for e in evaluations]:
        if dataset_id is None:
            continue
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ValueError(f"dataset_id must be a non-empty string, got {dataset_id!r}")
        if dataset_id not in datasets:
            datasets.append(dataset_id)
    if model_name is None:
        model_name = repo_id.rstrip("/").split("/")[-1] if repo_id else f"secu-{config['backbone']}"

    data = ModelCardData(**(card_data.to_dict() if card_data is not None else {}))
    data.datasets = datasets or None
    data.metrics = list(METRIC_RANGES)
    data.model_name = model_name
    data.eval_results = [
        EvalResult(
            task_type=TASK_TYPES.get(e.get("assignment", "memory"), "image-clustering"),
            task_name=f"Image clustering ({e['assignment_text']})",
            dataset_type=e["dataset_id"],
            dataset_name=e["dataset"],
            dataset_split=e["split"],
            metric_type=metric,
            metric_name=f"{METRIC_NAMES[metric]}, head K={e['num_clusters']}",
            metric_value=e[metric],
        )
        for e in evaluations
        for metric in METRIC_RANGES
    ] or None
    training_details = [
        (key, _describe(value))
        for key, value in training.items()
        if key not in _TRAINING_SPECIAL_KEYS and value is not None
    ]
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    text = template if template is not None else find_template().read_text(encoding="utf-8")
    content = environment.from_string(text).render(
        card_data=data.to_yaml(),
        config=config,
        evaluations=evaluations,
        training=training,
        training_details=training_details,
        k_selection=None if recommended is None else training["k_selection"],
        command=shlex.join(command) if isinstance(command, list) else command,
        model_name=model_name,
        repo_id=repo_id if repo_id else "path/to/saved-model",
        example_k=evaluations[0]["num_clusters"] if evaluations else config["num_clusters"][0],
    )
    return ModelCard(content)


def check_results(results: dict | None) -> None:
    """Checks evaluation results against the format of the module docstring.

    Raises:
        ValueError: A field is missing or out of range (the message names it).

    Examples:
        >>> check_results({"dataset": "MNIST-5k", "split": "train", "num_clusters": 10,
        ...                "accuracy": 0.9, "nmi": 0.8, "ari": 0.7})
        >>> check_results({"dataset": "MNIST-5k", "split": "train", "num_clusters": 10,
        ...                "accuracy": 90.0, "nmi": 0.8, "ari": 0.7})
        Traceback (most recent call last):
        ...
        ValueError: results evaluation 0: accuracy must be a number in [0, 1] (a fraction, ...
    """
    _evaluations(results)


def _check_config(config: dict) -> dict:
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, not {type(config).__name__}")
    required = ("backbone", "in_chans", "dim", "num_clusters", "input_size", "mean", "std")
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"config lacks {missing} (pass SeCuModel.config)")
    defaults = {
        "backbone_kwargs": None,
        "projection_layers": 2,
        "predictor_hidden_dim": None,
        "temperature": 0.05,
    }
    return {**defaults, **config}


def _evaluations(results: dict | None) -> list[dict[str, Any]]:
    """Checked copies of the evaluations in ``results``, with display fields added."""
    if results is None:
        return []
    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict or None, not {type(results).__name__}")
    entries = results.get("evaluations", [results])
    if not isinstance(entries, list) or not entries:
        raise ValueError("results['evaluations'] must be a non-empty list of evaluations")
    evaluations = []
    for position, entry in enumerate(entries):
        where = f"results evaluation {position}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a dict, not {type(entry).__name__}")
        missing = [
            k for k in ("dataset", "split", "num_clusters", *METRIC_RANGES) if k not in entry
        ]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        for key in ("dataset", "split"):
            if not isinstance(entry[key], str) or not entry[key]:
                raise ValueError(f"{where}: {key} must be a non-empty string, got {entry[key]!r}")
        k = entry["num_clusters"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"{where}: num_clusters must be an int >= 2, got {k!r}")
        for metric, (low, high) in METRIC_RANGES.items():
            value = entry[metric]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise ValueError(
                    f"{where}: {metric} must be a number in [{low:g}, {high:g}] (a fraction, "
                    f"not a percentage), got {value!r}"
                )
        num_images = entry.get("num_images")
        if num_images is not None and (
            isinstance(num_images, bool) or not isinstance(num_images, int)
        ):
            raise ValueError(f"{where}: num_images must be an int, got {num_images!r}")
        assignment = entry.get("assignment", "memory")
        if not isinstance(assignment, str) or not assignment:
            raise ValueError(f"{where}: assignment must be a non-empty string, got {assignment!r}")
        dataset_id = entry.get("dataset_id")
        evaluations.append(
            {
                **entry,
                # The model-index's dataset type: a Hub id, else a name (never a local path).
                "dataset_id": dataset_id
                if dataset_id is not None
                else re.sub(r"[^A-Za-z0-9._-]+", "-", entry["dataset"]).strip("-").lower(),
                "dataset_id_given": dataset_id,
                "num_images": num_images,
                "assignment_text": ASSIGNMENT_DESCRIPTIONS.get(assignment, assignment),
                "notes": entry.get("notes"),
            }
        )
    return evaluations


def _describe(value: Any) -> str:
    """A training detail as card text: strings as they are, other values as JSON."""
    if isinstance(value, str):
        return value
    return f"`{json.dumps(value)}`"

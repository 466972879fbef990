"""The README's commands and example are true, and so are the docs pages' command blocks and
example final lines (the ones the README moved there)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FINAL_LINE = re.compile(r"<!-- final line of (recipes/\w+\.py) -->\n```json\n(.*?)```", re.DOTALL)
# Keys whose value may be null in a real line (no second K close to the first; no labels).
NULLABLE = {"also_plausible", "start_accuracy"}
# Keys a real line has only in some runs, each said in the text beside the example.
OCCASIONAL = {"advice"}  # a from-scratch run whose clusters have not settled


def test_readme_starts_with_the_setup_commands_and_ci_runs_both_test_suites():
    first_block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).splitlines()
    assert first_block[0].startswith("# 1. Set up, then train")
    assert first_block[1].endswith("accelerate launch recipes/train.py")
    assert first_block[2].startswith("# 2. Set up, then run the tests")
    assert first_block[3].endswith("python -m pytest -q")
    assert first_block[4].startswith("# 3. Then the slow suite")
    assert first_block[5] == ".venv/bin/python -m pytest -q -m slow"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "Set up, then run the tests" in ci and "Then the slow suite" in ci


def test_the_readme_is_short_and_its_lines_narrow():
    """At most 250 lines, none over 100 characters, except the commands that CI reads as they
    are written and what render_docs.py writes between its markers."""
    lines = README.splitlines()
    assert len(lines) <= 250, len(lines)
    commands = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1).splitlines()
    rendered = False
    for number, line in enumerate(lines, 1):
        rendered = rendered or ("<!-- render:" in line and "table=" in line)
        marked = rendered or "<!-- render:" in line
        if "<!-- end render -->" in line:
            rendered = False
        assert marked or line in commands or len(line) <= 100, (number, line)


def test_lightly_timm_example_runs(tmp_path):
    example = re.search(r"```python\n(.*?)```", README, re.DOTALL).group(1)
    script = tmp_path / "example.py"
    script.write_text(example)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ids = re.findall(r"\d+", result.stdout.strip().splitlines()[-1])
    assert ids and all(0 <= int(i) < 10 for i in ids)  # cluster ids of head 0 (K=10)


def docs_block(name: str) -> str:
    """The one ``# name`` bash block among the README and the docs pages."""
    found = [
        match.group(1)
        for page in PAGES
        for match in re.finditer(rf"```bash\n# {name}\n(.*?)```", page.read_text(), re.DOTALL)
    ]
    assert len(found) == 1, f"{len(found)} blocks named # {name} in README.md and docs/*.md"
    return found[0]


def run_docs_block(name: str, count: int, shorter: dict[str, str], cwd: Path):
    """Runs the ``# name`` bash block of the README or a docs page line by line in ``cwd``
    (the venv's programs, the repository's recipes), appending ``shorter[recipe]`` to a
    recipe's line; returns every line's result."""
    block = docs_block(name)
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == count
    bin_dir = Path(sys.executable).parent
    results = []
    for line in lines:
        line = line.replace(".venv/bin/", f"{bin_dir}/")
        for recipe, extra in shorter.items():
            if recipe in line:
                line += extra
        line = line.replace("recipes/", f"{ROOT}/recipes/")
        result = subprocess.run(
            line, shell=True, capture_output=True, text=True, timeout=300, check=False, cwd=cwd
        )
        assert result.returncode == 0, line + "\n" + result.stdout[-2000:] + result.stderr[-3000:]
        results.append(result)
    return results


@pytest.mark.slow
def test_readme_workflow_commands_run(tmp_path):
    """docs/hub.md's workflow, line by line, in a scratch directory with 2 epochs. Its first
    line is the README's first command, shortened: that run's outputs are checked too (one
    MNIST-5k run for both: each costs a minute)."""
    shorter = {"recipes/train.py": " --epochs 2 --no_progress"}
    results = run_docs_block("workflow", 5, shorter, tmp_path)
    rows = (tmp_path / "outputs" / "clusters.csv").read_text().splitlines()
    assert rows[0] == "path,cluster,confidence" and len(rows) == 201
    assert (tmp_path / "outputs" / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from secu_plugin.train.presets import get_preset

    assert results[-1].stdout.strip() == f"{get_preset('mnist5k').bank.num_clusters} True"
    train = results[0]
    summary = json.loads(train.stdout.strip().splitlines()[-1])
    assert_shortened_demo_run(summary, train.stdout, tmp_path / "outputs" / "mnist5k")


def assert_shortened_demo_run(summary: dict, log: str, out: Path) -> None:
    """The README's first command, shortened (MNIST-5k, 2 epochs): its final line ``summary``,
    its log and its output directory ``out``."""
    assert set(summary) >= {
        "accuracy",
        "nmi",
        "ari",
        "memory_accuracy",
        "epochs",
        "seconds",
        "output_dir",
    }
    assert summary["epochs"] == 2 and 0.0 <= summary["accuracy"] <= 1.0
    assert "epoch 1: loss" in log and "cluster size min/max K=2:" in log
    assert " K=10:" in log  # the head of the true K is among the grid's
    # Accelerate's TensorBoard tracker wrote the run's scalars under output_dir/logs.
    events = b"".join(p.read_bytes() for p in (out / "logs").rglob("events.out.tfevents.*"))
    for tag in (b"train/loss", b"lr/encoder", b"lr/centers", b"epoch/changed",
                b"epoch/memory_accuracy", b"clusters/K10/min"):  # fmt: skip
        assert tag in events, tag
    for name in (
        "cluster_sizes.png",
        "montage.png",
        "report/index.html",
        "results.json",
        "model/config.json",
        "model/model.safetensors",
        "model/README.md",
    ):
        assert (out / name).is_file(), name
    from huggingface_hub import ModelCard

    from secu_plugin.models import SeCuModel

    model = SeCuModel.from_pretrained(str(out / "model"))
    results = json.loads((out / "results.json").read_text())
    # The card's results, read back by huggingface_hub's own parser, are the measured ones,
    # each evaluation (nearest center, training memory) distinct.
    card = ModelCard.load(out / "model" / "README.md")
    reported = sorted((r.metric_type, round(r.metric_value, 6)) for r in card.data.eval_results)
    measured = sorted(
        (metric, round(evaluation[metric], 6))
        for evaluation in results["evaluations"]
        for metric in ("accuracy", "nmi", "ari")
    )
    assert len(results["evaluations"]) == 2 and reported == measured
    assert summary["accuracy"] == pytest.approx(results["evaluations"][0]["accuracy"], abs=1e-4)
    # The times are added to results.json as the run ends, after the model was saved.
    seconds = results.pop("seconds")
    # the recommended head is in results.json and in the model's training record
    assert results.pop("k_selection") == model.training_recipe["k_selection"]
    # the comparison with k-means on the pixels is the run's, not the model's
    check = results.pop("pixel_check")
    assert check["score"] == "accuracy" and summary["beats_kmeans_pixels"] == check["learned"]
    assert model.results == results
    assert len(seconds["epochs"]) == 2 and seconds["total"] == summary["seconds"]
    assert seconds["total"] >= sum(seconds["epochs"]) > 0
    assert min(seconds["epochs"]) <= seconds["median_epoch"] <= max(seconds["epochs"])


@pytest.mark.slow
def test_readme_pretrained_commands_run(tmp_path):
    """docs/frozen.md's offline pretrained-backbone lines, on 200 digits and 3 epochs of heads."""
    from secu_plugin.data import ImageDataset

    ImageDataset.mnist5k().save_pngs(tmp_path / "outputs" / "digits", limit=200)
    extra = f" --data outputs/digits --epochs 3 --no_progress --cache_dir {tmp_path}/cache"
    run_docs_block("pretrained", 3, {"recipes/train_head.py": extra}, tmp_path)
    rows = (tmp_path / "outputs" / "lite0-clusters.csv").read_text().splitlines()
    assert rows[0] == "path,cluster,confidence" and len(rows) == 201


def final_line_examples(recipe: str) -> list[tuple[str, dict]]:
    """Every example of ``recipe``'s final JSON line in the README and the docs pages: a
    ``json`` block right after ``<!-- final line of recipes/NAME.py -->``; (page, line)."""
    return [
        (page.name, json.loads(match.group(2)))
        for page in PAGES
        for match in FINAL_LINE.finditer(page.read_text())
        if match.group(1) == recipe
    ]


def kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def check_final_line_examples(recipe: str, real: dict) -> None:
    """The documented examples of ``recipe``'s final line have the real line's keys, each
    with a value of the real one's type (null only where a real line may have it)."""
    examples = final_line_examples(recipe)
    assert examples, f"no example of {recipe}'s final line in README.md or docs/*.md"
    for page, example in examples:
        shown, expected = set(example), set(real) - OCCASIONAL
        assert shown == expected, (page, "missing", expected - shown, "extra", shown - expected)
        for key in expected:
            kinds = {kind(example[key]), kind(real[key])}
            allowed = len(kinds) == 1 or (key in NULLABLE and "null" in kinds)
            assert allowed, (page, key, example[key], real[key])


def test_every_example_final_line_is_checked_against_a_real_run():
    """A JSON block that looks like a recipe's final line carries the tag that puts it under
    check_final_line_examples (whose callers run that recipe): none escapes the check."""
    checked = {"recipes/train.py", "recipes/train_head.py", "recipes/finetune.py"}
    for page in PAGES:
        text = page.read_text()
        blocks = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
        lines = [block for block in blocks if '"output_dir"' in block]  # every final line has it
        tagged = FINAL_LINE.findall(text)
        assert len(lines) == len(tagged), f"{page.name}: a final line without its recipe's tag"
        assert {recipe for recipe, _ in tagged} <= checked
    assert all(final_line_examples(recipe) for recipe in checked)


def test_the_demo_example_shows_the_figures_of_the_recorded_run():
    """The README's demo line shows the run that docs/demo_runs.json records first."""
    (page, example), *_ = final_line_examples("recipes/train.py")
    recorded = json.loads((ROOT / "docs" / "demo_runs.json").read_text())["runs"][0]
    figures = ["epochs", "accuracy", "nmi", "ari", "memory_accuracy", "memory_nmi", "memory_ari"]
    assert page == "README.md"
    assert {k: example[k] for k in figures} == {k: recorded[k] for k in figures}
    assert example["seconds"] == recorded["seconds"]

"""The docs' figures are rendered from their raw files: the pages agree with the JSON."""

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from secu_plugin.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "render_docs.py"
spec = importlib.util.spec_from_file_location("render_docs", SCRIPT)
render_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_docs)

RESULTS = {
    "evaluations": [
        {"dataset": "mnist5k", "split": "train", "num_clusters": 10, "head": 0,
         "assignment": "predict", "num_images": 5000, "accuracy": 0.91234, "nmi": 0.8,
         "ari": 0.7},
    ]
}  # fmt: skip


def write_repo(root: Path, page: str, results: dict = RESULTS) -> Path:
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "docs" / "run.json").write_text(json.dumps(results))
    (root / "README.md").write_text(page)
    return root / "README.md"


def test_the_docs_match_their_render():
    """Every table and marked number in README.md and docs/*.md equals what its file gives."""
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]


def test_the_docs_have_markers_for_their_figure_files():
    """The raw files the docs quote are rendered from, each by at least one marker."""
    pages = "".join(p.read_text(encoding="utf-8") for p in render_docs.documents(ROOT))
    named = set(re.findall(r"<!-- render: ([^>]*?) -->", pages))
    files = {token for spec in named for token in shlex.split(spec) if "=" not in token}
    for path in ["docs/cpu_loss_step.json", "docs/memory_table.json", "docs/kill_soak.json",
                 "docs/mnist5k_results.json", "docs/frozen_heads_scale_cuda.json",
                 "docs/gpu_2026-11-27/train_step.json"]:  # fmt: skip
        assert path in files


def test_render_fills_a_table_and_check_finds_drift(tmp_path):
    page = write_repo(
        tmp_path,
        "Intro.\n\n<!-- render: docs/run.json table=clustering -->\n<!-- end render -->\n\n"
        "ACC <!-- render: docs/run.json value=evaluations.0.accuracy fmt=.3f -->"
        "0.5<!-- end render --> in prose.\n",
    )
    assert render_docs.render_all(tmp_path, check=True)  # differs: nothing rendered yet
    assert "0.5<" in page.read_text()  # --check changed nothing
    render_docs.render_all(tmp_path, check=False)
    text = page.read_text()
    assert "| mnist5k | tuned on" in text and "| 0.9123 | 0.8000 | 0.7000 |" in text
    assert "ACC <!-- render: docs/run.json value=evaluations.0.accuracy fmt=.3f -->0.912<" in text
    assert "Source: `docs/run.json` (date and commit not recorded)." in text
    assert render_docs.render_all(tmp_path, check=True) == []

    page.write_text(text.replace("0.9123", "0.9500"))  # a table edited by hand
    diffs = render_docs.render_all(tmp_path, check=True)
    assert len(diffs) == 1 and "-| mnist5k" in diffs[0] and "+| mnist5k" in diffs[0]
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--root", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 1 and "0.9500" in completed.stdout


def test_markers_in_code_blocks_are_examples_and_stay(tmp_path):
    example = (
        "```markdown\n<!-- render: docs/missing.json table=nothing -->\n<!-- end render -->\n```\n"
    )
    page = write_repo(tmp_path, example)
    assert render_docs.render_all(tmp_path, check=False) == []
    assert page.read_text() == example


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("<!-- render: docs/run.json table=nope -->\n<!-- end render -->", "unknown table 'nope'"),
        ("<!-- render: docs/none.json table=clustering -->\n<!-- end render -->", "no such file"),
        ("<!-- render: ../x.json table=clustering -->\n<!-- end render -->", "inside the repository"),
        ("<!-- render: table=clustering -->\n<!-- end render -->", "name the JSON file"),
        ("<!-- render: docs/run.json -->\n<!-- end render -->", "exactly one of"),
        ("<!-- render: docs/run.json table=clustering -->\nno end", "1 render marker(s), 0 end(s)"),
        ("x <!-- render: docs/run.json value=evaluations.3.nmi --><!-- end render -->", "nothing at '3'"),
        ("x <!-- render: docs/run.json value=evaluations.*.nmi op=avg --><!-- end render -->", "op=avg"),
        ("<!-- render: docs/run.json table=loss_step -->\n<!-- end render -->", "KeyError('forms')"),
        ("<!-- render: docs/run.json value=evaluations.0.nmi --><!-- end render -->", "inside one line"),
    ],
)  # fmt: skip
def test_bad_markers_are_refused_with_the_problem_named(tmp_path, marker, message):
    write_repo(tmp_path, f"Text.\n\n{marker}\n")
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        render_docs.render_all(tmp_path, check=True)
    assert str(raised.value).startswith("README.md: ")  # the page is named


def test_an_accuracy_table_refuses_a_data_set_not_labelled_tuned_on_or_held_out(tmp_path):
    unknown = {"evaluations": [{**RESULTS["evaluations"][0], "dataset": "my_photos"}]}
    write_repo(
        tmp_path, "<!-- render: docs/run.json table=clustering -->\n<!-- end render -->\n", unknown
    )
    with pytest.raises(ValueError, match="'my_photos': say whether it is tuned on or held out"):
        render_docs.render_all(tmp_path, check=True)
    labelled = {"evaluations": [{**unknown["evaluations"][0], "tuned_on": False}]}
    page = write_repo(tmp_path, (tmp_path / "README.md").read_text(), labelled)
    render_docs.render_all(tmp_path, check=False)
    assert "| my_photos | held out |" in page.read_text()


def test_the_model_cards_secu_cluster_lines_use_real_flags():
    """The card tells users a secu-cluster command: it must parse with the real CLI."""
    for card in ["template.md", "secu-mnist5k.md"]:
        text = (ROOT / "model_cards" / card).read_text(encoding="utf-8")
        command = re.search(r"^secu-cluster (.*)\\\n(.*)$", text, re.MULTILINE)
        line = re.sub(r"\{\{.*?\}\}", "10", command[1] + command[2])
        args = build_parser().parse_args(shlex.split(line))
        assert args.num_clusters == 10 and args.out == "clusters.csv"


def test_a_kind_registered_through_render_docs_is_rendered(tmp_path):
    """Another script's kind of table, registered with render_docs.renderer, is found."""

    @render_docs.renderer("test_count")
    def count(datas: list[dict], options: dict[str, str]) -> str:
        return f"{len(datas[0]['evaluations'])} evaluation(s)"

    try:
        page = write_repo(
            tmp_path, "<!-- render: docs/run.json table=test_count -->\n<!-- end render -->\n"
        )
        render_docs.render_all(tmp_path, check=False)
        assert "1 evaluation(s)" in page.read_text()
    finally:
        del render_docs.RENDERERS["test_count"]


def test_seeds_render_as_mean_and_range_and_rounds_as_median_and_range(tmp_path):
    runs = [{"seed": seed, "kmeans_pixels": {"accuracy": acc, "nmi": 0.5, "ari": 0.25},
             "kmeans_whitened_pixels": {}} for seed, acc in enumerate([0.5, 0.6, 0.7])]  # fmt: skip
    pixels = {"sets": [{"set": "letters", "tuned_on": "held out", "eval_split": "train",
                        "eval_images": 30, "K": 3, "runs": runs}]}  # fmt: skip
    page = write_repo(
        tmp_path,
        "<!-- render: docs/run.json table=pixel_baselines -->\n<!-- end render -->\n",
        pixels,
    )
    render_docs.render_all(tmp_path, check=False)
    assert (
        "| letters | held out | train (30) | 3 | k-means on pixels | 3 | 0.600 (0.500-0.700) |"
        in page.read_text()
    )
    modes = [{"mode": mode, "ms_per_step": ms, "ms_per_step_min": ms - 1, "ms_per_step_max": ms + 2,
              "ms_per_step_rounds": [ms - 1, ms, ms + 2], "images_per_s": 1.0, "peak_mib": 1.0}
             for mode, ms in (("A", 100.0), ("B", 125.0))]  # fmt: skip
    page = write_repo(tmp_path, "<!-- render: docs/run.json table=train_step -->\n<!-- end render -->\n",
                      {"args": {}, "modes": modes})  # fmt: skip
    render_docs.render_all(tmp_path, check=False)
    assert "| 125.0 (124.0-127.0, 3 rounds) | 1 | 1 | 20.00% |" in page.read_text()

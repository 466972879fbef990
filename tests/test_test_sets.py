"""benchmarks/make_test_sets.py: the tune and held-out sets, their manifest, determinism, and
the error when no typeface is installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.make_test_sets import FONT_DIRS, find_fonts, main

LETTER_SETS = ["letters5_grey28", "letters5_colour64"]


@pytest.fixture(scope="module")
def fonts() -> list:
    found = find_fonts(FONT_DIRS)
    if not found:
        pytest.skip("no typeface installed (e.g. apt-get install fonts-dejavu-core)")
    return found


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_letter_sets_and_their_manifest(tmp_path, fonts):
    manifest = main(["--out", str(tmp_path), "--sets", *LETTER_SETS, "--per_class", "4"])
    assert manifest == json.loads((tmp_path / "sets.json").read_text())
    assert manifest["fonts"] == [path for path, _ in fonts] and manifest["seed"] == 0
    assert {"command", "commit", "dirty", "date_utc"} <= set(manifest["provenance"])
    grey, colour = manifest["sets"]
    for entry, size, mode in ((grey, 28, "L"), (colour, 64, "RGB")):
        assert entry["role"] == "held_out" and entry["classes"] == list("ABCDE")
        assert entry["images"] == 20 and entry["size"] == f"{size}x{size}"
        assert entry["colour"] == ("grey" if mode == "L" else "rgb")
        root = Path(entry["data"])
        assert sorted(p.name for p in (root / "train").iterdir()) == list("ABCDE")
        for path in (root / "train").rglob("*.png"):
            image = Image.open(path)
            assert image.size == (size, size) and image.mode == mode
            pixels = np.asarray(image).reshape(size * size, -1)
            # Ink and background both present: a letter was drawn, not a blank frame.
            assert len(np.unique(pixels, axis=0)) > 2
            if mode == "L":
                assert pixels.min() == 0 and pixels.max() > 128
        assert len(files_of(root)) == 20


def test_letter_sets_are_deterministic_given_the_seed(tmp_path, fonts):
    for out, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        main(["--out", str(tmp_path / out), "--sets", "letters5_grey28", "--per_class", "3",
              "--seed", seed])  # fmt: skip
    first, again, other = (files_of(tmp_path / out / "letters5_grey28") for out in "abc")
    assert first == again and first.keys() == other.keys() and first != other


def test_tune_sets_keep_their_role(tmp_path):
    manifest = main(["--out", str(tmp_path), "--sets", "mnist5k", "digits8"])
    built_in, digits = manifest["sets"]
    assert built_in["role"] == digits["role"] == "tune"
    assert built_in["data"] == "mnist5k" and "fonts" not in manifest
    assert digits["images"] == 1797 == len(list(Path(digits["data"]).rglob("*.png")))
    assert digits["classes"] == [str(d) for d in range(10)] and digits["colour"] == "grey"


def test_no_typeface_is_a_clear_error(tmp_path):
    empty = tmp_path / "no_fonts"
    empty.mkdir()
    (empty / "broken.ttf").write_bytes(b"not a font")  # unreadable files are skipped
    with pytest.raises(SystemExit, match="apt-get install fonts-dejavu-core"):
        main(["--out", str(tmp_path / "out"), "--sets", "letters10_grey28", "--fonts", str(empty)])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "out"), "--per_class", "0"])


@pytest.mark.slow
def test_frozen_heldout_runs_the_recipe_and_the_ceiling(tmp_path, fonts, monkeypatch):
    """benchmarks/frozen_heldout.py on a tiny held-out set: the real recipe (EfficientNet-Lite0,
    2 epochs), the ceiling of the features it cached, the JSON with provenance."""
    from benchmarks.frozen_heldout import main as frozen_heldout

    monkeypatch.setenv("SECU_NUM_THREADS", "1")
    main(["--out", str(tmp_path / "sets"), "--sets", "letters5_grey28", "--per_class", "20"])
    output = tmp_path / "frozen.json"
    report = frozen_heldout([
        "--manifest", str(tmp_path / "sets" / "sets.json"), "--seeds", "0", "--epochs", "2",
        "--work", str(tmp_path / "work"), "--json", str(output), "--partial",
    ])  # fmt: skip
    assert report == json.loads(output.read_text())
    assert report["partial"] and report["sets"] == ["letters5_grey28"]
    assert report["manifest_provenance"]["commit"] == report["provenance"]["commit"]
    (run,) = report["runs"]
    assert run["returncode"] == 0, run.get("output_tail")
    assert "num_clusters=[5,10,15,20,25]" in run["command"]
    evaluation = run["results"]["evaluations"][0]
    assert evaluation["num_clusters"] == 5 and evaluation["num_images"] == 100
    assert Path(run["cache_dir"]).parent == tmp_path / "work" / "cache"
    assert run["feature_cache"] == "cold" and run["variant"] == "default"
    ceiling = run["ceiling"]
    assert ceiling == run["results"]["feature_ceiling"]  # the recipe's own
    assert ceiling["images"] == 100 and ceiling["num_clusters"] == 5
    # ImageNet features separate five letters far better than chance, with the labels.
    assert ceiling["linear_probe"]["accuracy"] > 0.5
    assert 0 <= ceiling["knn_agreement"]["whitened"] <= 1
    summary = report["summary"]["letters5_grey28"]
    assert summary["runs"] == 1 and summary["heads_acc_mean"] == evaluation["accuracy"]
    assert (
        summary["seconds_cold"] == [run["seconds_recipe"]] and summary["seconds_warm_mean"] is None
    )
    best = max(
        ceiling[m]["accuracy"] for m in ("kmeans_raw", "kmeans_whitened", "spectral_knn_graph")
    )
    assert summary["meets_plain_clustering_target"] == (summary["heads_acc_mean"] >= best + 0.05)

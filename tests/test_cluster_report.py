"""The static cluster report, read back: its structure parsed (fast), and rendered by headless
Chromium from disk (slow); ``secu-cluster --report/--out x.parquet/--data`` on real digits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from factories import tiny_digit_model
from launch import write_digit_folder
from PIL import Image

from benchmarks.report_screenshot import browser_command, chromium, report_index
from benchmarks.report_screenshot import main as report_screenshot
from secu_plugin.cli import main
from secu_plugin.cluster_report import report as report_module
from secu_plugin.cluster_report import write_cluster_report
from secu_plugin.data import load_mnist5k

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = '<script>alert("x")</script>&.png'
HOSTILE_FILE = '"><script>alert(1)<script>&.png'  # a file name: no "/"


class ReportParser(HTMLParser):
    """The parts of index.html the tests check, as the browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[dict] = []  # attributes + "clusters": [attributes]
        self.images: list[dict] = []
        self.scripts = 0
        self.body: dict = {}
        self.external: list[str] = []
        self.confusion_cells: list[int] = []
        self._in_confusion = self._in_cell = False
        self._row: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "body":
            self.body = attributes
        elif tag == "script":
            self.scripts += 1
            if "src" in attributes:
                self.external.append(attributes["src"])
        elif tag in ("link", "iframe", "object", "embed"):
            self.external.append(tag)
        elif tag == "section" and "head" in classes:
            self.heads.append({**attributes, "clusters": [], "images": []})
        elif tag == "section" and "cluster" in classes:
            self.heads[-1]["clusters"].append({**attributes, "rows": {}})
        elif tag == "div" and "row" in classes and self.heads and self.heads[-1]["clusters"]:
            self._row = self.heads[-1]["clusters"][-1]["rows"].setdefault(classes[1], [])
        elif tag == "img":
            self.images.append(attributes)
            if "thumb" in classes:
                self._row.append(attributes)
        elif tag == "table" and "confusion" in classes:
            self._in_confusion = True
        elif tag == "td" and self._in_confusion:
            self._in_cell = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_confusion = False
        elif tag == "td":
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell and data.strip():
            self.confusion_cells.append(int(data))


def parse_report(index: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def check_report(index: Path, cluster_ids: np.ndarray, num_clusters: list[int]) -> ReportParser:
    """The checks every report passes: each head has a section per cluster with its size,
    the sizes add up, every image link resolves inside the report, nothing from the network,
    one script (the report's own)."""
    report = parse_report(index)
    assert [int(h["data-num-clusters"]) for h in report.heads] == num_clusters
    for head, section in enumerate(report.heads):
        clusters = section["clusters"]
        assert [int(c["data-cluster"]) for c in clusters] == list(range(num_clusters[head]))
        sizes = [int(c["data-size"]) for c in clusters]
        assert sizes == np.bincount(cluster_ids[head], minlength=num_clusters[head]).tolist()
        assert sum(sizes) == cluster_ids.shape[1]
    assert report.images and report.scripts == 1 and report.external == []
    for image in report.images:
        source = image["src"]
        assert "://" not in source and not source.startswith("/"), source
        target = (index.parent / source).resolve()
        assert target.is_file() and index.parent.resolve() in target.parents, source
        Image.open(target).verify()
    return report


@pytest.fixture(scope="module")
def digits():
    images, labels = load_mnist5k()
    chosen = np.random.default_rng(0).choice(len(images), 300, replace=False)
    return images[chosen], labels[chosen]


def test_report_of_arrays_shows_every_cluster_and_escapes_names(digits, tmp_path):
    images, labels = digits
    rng = np.random.default_rng(1)
    cluster_ids = np.stack([labels, (labels + rng.integers(0, 2, len(labels))) % 4])
    confidence = rng.uniform(0.2, 1.0, cluster_ids.shape)
    similarity = rng.uniform(-1.0, 1.0, cluster_ids.shape)
    names = [f"digit_{i}.png" for i in range(len(images))]
    names[5] = HOSTILE
    similarity[:, 5] = 1.0  # the first shown in its clusters
    class_names = [str(c) for c in range(10)]
    class_names[3] = "<b>three</b>"
    index = write_cluster_report(
        tmp_path / "report", images, cluster_ids, confidence, similarity,
        num_clusters=[12, 4], recommended_head=1, labels=labels, class_names=class_names,
        names=names, per_cluster=5,
    )  # fmt: skip
    report = check_report(index, cluster_ids, [12, 4])
    html = index.read_text(encoding="utf-8")

    # K=12 has two empty clusters: present, with size 0.
    assert [c["data-size"] for c in report.heads[0]["clusters"][10:]] == ["0", "0"]
    # Hostile names are text: no element of theirs, the attribute value intact once parsed.
    assert "<script>alert" not in html and "<b>three</b>" not in html
    assert "&lt;b&gt;three&lt;/b&gt;" in html
    assert {image["alt"] for image in report.images if image.get("data-index") == "5"} == {HOSTILE}
    # The recommended head is marked and shown first.
    assert [("data-recommended" in h) for h in report.heads] == [False, True]
    assert report.body["data-default-head"] == "head-1"
    # Rows: nearest to the center first; least confident first, none of the nearest.
    for head, section in enumerate(report.heads):
        for cluster in section["clusters"]:
            members = np.flatnonzero(cluster_ids[head] == int(cluster["data-cluster"]))
            if not len(members):
                continue
            nearest = [int(i["data-index"]) for i in cluster["rows"]["nearest"]]
            ranked = members[np.argsort(-similarity[head][members], kind="stable")]
            assert nearest == ranked[: len(nearest)].tolist() and len(nearest) == min(
                5, len(members))  # fmt: skip
            unsure = [int(i["data-index"]) for i in cluster["rows"].get("least-confident", [])]
            rest = [m for m in members[np.argsort(confidence[head][members])] if m not in nearest]
            assert unsure == rest[:5]
    # Thumbnails are shared: one file per image, whichever heads show it.
    thumbs = {image["src"] for image in report.images if "thumb" in image.get("class", "")}
    assert len(thumbs) == len(list((tmp_path / "report" / "thumbs").iterdir()))
    shown = {int(i["data-index"]) for i in report.images if "data-index" in i}
    assert thumbs == {f"thumbs/{i}.jpg" for i in shown}
    # The confusion matrices count every labelled image once per head.
    assert sum(report.confusion_cells) == 2 * len(labels)


def test_report_shows_the_features_ceiling_beside_each_heads_score(tmp_path):
    """With labels, every head's line carries the ceiling next to its ACC; without labels
    there is no score to set it beside, so it is not shown."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(60) % 3
    ids = np.stack([labels, (labels + np.arange(60)) % 4])
    ceiling = {"linear probe (supervised)": 0.9812, "best plain clustering": 0.7}
    ones = np.ones(ids.shape)
    page = write_cluster_report(
        tmp_path / "a", images, ids, ones, labels=labels, feature_ceiling=ceiling
    ).read_text()
    line = "ACC 1.000, NMI 1.000, ARI 1.000; ceiling of the same features: "
    assert (
        page.count(line + "linear probe (supervised) ACC 0.981, best plain clustering ACC 0.700")
        == 1
    )
    assert page.count("ceiling of the same features:") == 2  # both heads
    unlabelled = write_cluster_report(tmp_path / "b", images, ids, ones, feature_ceiling=ceiling)
    assert "ceiling of the same features" not in unlabelled.read_text()


def test_report_size_does_not_grow_with_the_data(tmp_path):
    """20,000 images, heads of 10 and 500 clusters: the thumbnails and the page stay within
    the per-head budget (two rows per cluster, at least one image each)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20_000, 32, 32, 3), dtype=np.uint8)
    cluster_ids = np.stack([rng.integers(0, 10, 20_000), rng.integers(0, 500, 20_000)])
    confidence = rng.uniform(0, 1, cluster_ids.shape)
    index = write_cluster_report(tmp_path, images, cluster_ids, confidence,
                                 num_clusters=[10, 500], images_per_head=1000)  # fmt: skip
    report = check_report(index, cluster_ids, [10, 500])
    thumbs = list((tmp_path / "thumbs").iterdir())
    assert len(thumbs) <= 2 * 10 * 12 + 2 * 500 * 1
    assert len(report.heads[1]["clusters"][0]["rows"]["nearest"]) == 1
    total = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert total < 8_000_000 and index.stat().st_size < 2_000_000


def test_bad_inputs_name_the_problem(digits, tmp_path):
    images, labels = digits
    ids = labels[None]
    with pytest.raises(ValueError, match="one array of 300 values per head"):
        write_cluster_report(tmp_path / "a", images, ids[:, :10], np.ones((1, 10)))
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        write_cluster_report(tmp_path / "b", images, ids, np.full(ids.shape, 2.0))
    with pytest.raises(ValueError, match=r"cluster ids must lie in \[0, K\)"):
        write_cluster_report(tmp_path / "c", images, ids, np.ones(ids.shape), num_clusters=[5])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("a user's file")
    with pytest.raises(ValueError, match="not empty and holds no earlier report"):
        write_cluster_report(tmp_path / "d", images, ids, np.ones(ids.shape))
    assert (tmp_path / "d" / "mine.txt").exists()
    # An earlier report is replaced, old thumbnails included.
    write_cluster_report(tmp_path / "e", images, ids, np.ones(ids.shape))
    index = write_cluster_report(tmp_path / "e", images[:20], ids[:, :20], np.ones((1, 20)))
    check_report(index, ids[:, :20], [10])
    assert all(int(p.stem) < 20 for p in (tmp_path / "e" / "thumbs").iterdir())
    # A write killed half-way (its thumbnails written, not its page) is replaced too.
    (tmp_path / "f" / "thumbs").mkdir(parents=True)
    (tmp_path / "f" / "thumbs" / "0.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty and holds no earlier report"):
        write_cluster_report(tmp_path / "f", images, ids, np.ones(ids.shape))
    report_module._prepare_directory(tmp_path / "g")  # the start of a write, then a kill
    (tmp_path / "g" / "thumbs").mkdir()
    (tmp_path / "g" / "thumbs" / "0.png").write_bytes(b"")
    check_report(write_cluster_report(tmp_path / "g", images, ids, np.ones(ids.shape)), ids, [10])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("model")
    tiny_digit_model(num_clusters=[10, 4]).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    folder = write_digit_folder(tmp_path_factory.mktemp("digits") / "digits", count=60)
    Image.open(next(folder.rglob("*.png"))).save(folder / "3" / HOSTILE_FILE)
    return folder


def test_cli_writes_report_and_parquet_of_every_head(model_dir, digit_folder, tmp_path):
    import pyarrow.parquet as pq

    from secu_plugin.models import SeCuModel

    out, report = tmp_path / "clusters.parquet", tmp_path / "report"
    arguments = ["--model", model_dir, "--images", str(digit_folder)]
    assert main([*arguments, "--out", str(out), "--report", str(report)]) == 0
    table = pq.read_table(out).to_pydict()
    assert list(table) == ["path", "cluster_k10", "confidence_k10", "cluster_k4", "confidence_k4"]
    assert len(table["path"]) == 61 and any(p.endswith(HOSTILE_FILE) for p in table["path"])
    # The same assignments as model.predict, the CSV of the chosen head included.
    model = SeCuModel.from_pretrained(model_dir)
    images = [Image.open(p) for p in table["path"]]
    for head, k in enumerate([10, 4]):
        ids, confidence = model.predict(images, head=head)
        assert table[f"cluster_k{k}"] == ids.tolist()
        assert np.allclose(table[f"confidence_k{k}"], confidence.numpy(), atol=1e-6)
    assert main([*arguments, "--num-clusters", "4", "--out", str(tmp_path / "c.csv")]) == 0
    rows = (tmp_path / "c.csv").read_text().splitlines()[1:]
    assert [int(r.rsplit(",", 2)[1]) for r in rows] == table["cluster_k4"]

    ids = np.array([table["cluster_k10"], table["cluster_k4"]])
    check_report(report / "index.html", ids, [10, 4])
    assert "<script>alert" not in (report / "index.html").read_text(encoding="utf-8")


def test_cli_gives_a_hugging_face_data_set_back_with_cluster_columns(model_dir, digit_folder,
                                                                      tmp_path):  # fmt: skip
    import datasets

    from secu_plugin.models import SeCuModel

    out, report = tmp_path / "with-clusters", tmp_path / "report"
    folder = tmp_path / "imagefolder"
    shutil.copytree(digit_folder, folder, ignore=shutil.ignore_patterns(HOSTILE_FILE))
    arguments = ["--model", model_dir, "--data", str(folder), "--num-clusters", "4"]
    assert main([*arguments, "--out", str(out), "--report", str(report)]) == 0
    result = datasets.load_from_disk(str(out))
    assert len(result) == 60
    assert {"image", "label", "cluster_k10", "confidence_k10", "cluster_k4"} <= set(
        result.column_names)  # fmt: skip
    model = SeCuModel.from_pretrained(model_dir)
    ids, _ = model.predict(list(result["image"]), head=1)
    assert list(result["cluster_k4"]) == ids.tolist()
    assigned = np.array([list(result["cluster_k10"]), ids.tolist()])
    parsed = check_report(report / "index.html", assigned, [10, 4])
    assert [("data-recommended" in h) for h in parsed.heads] == [False, True]
    assert sum(parsed.confusion_cells) == 2 * 60  # imagefolder's labels: the class folders
    # A data set saved with save_to_disk goes in as it is; a rerun replaces the columns.
    again = tmp_path / "again.parquet"
    assert main(["--model", model_dir, "--data", str(out), "--out", str(again)]) == 0
    reread = datasets.load_dataset("parquet", data_files=str(again), split="train")
    assert list(reread["cluster_k4"]) == ids.tolist() and len(reread.column_names) == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "nothing to write"),
        (["--out", "x.csv", "--report", "r", "--resume"], "--resume continues a CSV"),
    ],
)
def test_cli_usage_errors(model_dir, digit_folder, monkeypatch, tmp_path, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["--model", model_dir, "--images", str(digit_folder), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_data_out_must_be_a_folder_or_parquet(model_dir, digit_folder, tmp_path, capsys):
    code = main(
        ["--model", model_dir, "--data", str(digit_folder), "--out", str(tmp_path / "x.csv")]
    )
    assert code == 2 and "a folder (save_to_disk) or a .parquet" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    """The docs' report command, after their pretrained lines, then Chromium opens the report
    from disk: every cluster of the shown head rendered, no console error. Then
    benchmarks/report_screenshot.py pictures the training run's own report, into tmp_path: no
    test writes docs/cluster_report.png."""
    from test_readme import run_docs_block

    (tmp_path / "outputs").mkdir()
    write_digit_folder(tmp_path / "outputs" / "digits", count=400)
    extra = f" --data outputs/digits --epochs 3 --no_progress --cache_dir {tmp_path}/cache"
    run_docs_block("pretrained", 3, {"recipes/train_head.py": extra}, tmp_path)
    run_docs_block("report", 1, {}, tmp_path)
    index = tmp_path / "outputs" / "report" / "index.html"
    browser = browser_command(tmp_path / "profile")
    dom = subprocess.run(
        [*browser, "--dump-dom", index.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rendered = ReportParser()
    rendered.feed(dom.stdout)
    visible = [h for h in rendered.heads if "hidden" not in h]
    assert len(visible) == 1 and "data-recommended" in visible[0]  # the script ran
    assert len(visible[0]["clusters"]) == int(visible[0]["data-num-clusters"])
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console

    published = (ROOT / "docs" / "cluster_report.png").read_bytes()
    run = tmp_path / "outputs" / "lite0-mnist5k"
    picture = tmp_path / "shot" / "cluster_report.png"
    record = report_screenshot(["--model", str(run / "model"), "--out", str(picture)])
    assert Image.open(picture).size == (1200, 1400)
    written = json.loads(picture.with_suffix(".json").read_text())
    assert written == record and written["provenance"]["command"]
    selection = json.loads((run / "results.json").read_text())["k_selection"]
    assert written["run"]["recommended_num_clusters"] == selection["recommended_num_clusters"]
    assert written["run"]["report"] == str(run / "report" / "index.html")
    assert (ROOT / "docs" / "cluster_report.png").read_bytes() == published


def test_the_screenshot_script_names_what_it_needs(tmp_path):
    with pytest.raises(ValueError, match="no report/index.html there"):
        report_index(tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("<html></html>")
    for given in (tmp_path, tmp_path / "model", tmp_path / "report"):
        assert report_index(given) == tmp_path / "report" / "index.html"


@pytest.mark.slow
def test_report_of_50000_images_stays_a_few_hundred_mb(tmp_path):
    """The worst case for JPEG: 50,000 images of noise, the demo's ten heads (10..100)."""

    class Noise:
        def __len__(self):
            return 50_000

        def __getitem__(self, index):
            pixels = np.random.default_rng(index).integers(0, 256, (128, 128, 3), np.uint8)
            return Image.fromarray(pixels)

    rng = np.random.default_rng(0)
    heads = list(range(10, 101, 10))
    cluster_ids = np.stack([rng.integers(0, k, 50_000) for k in heads])
    index = write_cluster_report(tmp_path, Noise(), cluster_ids,
                                 rng.uniform(0, 1, cluster_ids.shape), num_clusters=heads)  # fmt: skip
    check_report(index, cluster_ids, heads)
    total = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert total < 300_000_000, total


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

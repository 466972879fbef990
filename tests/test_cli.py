"""secu-cluster on a folder of real digit images (MNIST-5k), in-process and as a console script."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories import tiny_digit_model
from PIL import Image

from secu_plugin.cli import main
from secu_plugin.data import load_mnist5k
from secu_plugin.models import SeCuModel
from secu_plugin.viz import (
    MONTAGE_LABEL_WIDTH,
    MONTAGE_PADDING,
    PLOT_PANEL_HEIGHT,
    PLOT_PANEL_WIDTH,
)

CONSOLE_SCRIPT = Path(sys.executable).parent / "secu-cluster"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    model = tiny_digit_model(num_clusters=[10, 4])
    directory = tmp_path_factory.mktemp("model")
    model.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> tuple[Path, list[str], str]:
    """40 MNIST digits as image files of various sizes and modes, and one corrupt file.

    Returns the folder, the paths of the readable images and the path of the corrupt one.
    """
    images, _ = load_mnist5k()
    folder = tmp_path_factory.mktemp("digits")
    (folder / "nested" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    readable = []
    for number, index in enumerate(rng.choice(len(images), 40, replace=False)):
        digit = Image.fromarray(images[index])  # mode "L": grey
        subfolder = folder if number % 3 else folder / "nested"
        name = f"digit_{number:02d}.png"
        if number == 0:
            digit = digit.convert("RGB")
        elif number == 1:
            digit = digit.convert("RGBA")
        elif number == 2:
            digit = digit.convert("P")
        elif number == 3:
            digit = Image.fromarray(images[index].astype(np.uint16) * 257)  # 16-bit grey
        elif number == 4:
            digit = digit.resize((64, 48))
        elif number == 5:
            digit = digit.resize((17, 17))
        elif number == 6:
            name = f"digit_{number:02d}.jpg"
            digit = digit.resize((100, 100))
        elif number == 7:
            subfolder = folder / "nested" / "deeper"
        path = subfolder / name
        digit.save(path)
        readable.append(str(path))
    corrupt = folder / "x.png"
    corrupt.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not an image")
    return folder, sorted(readable), str(corrupt)


def read_rows(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def check_clusters_csv(path, readable: list[str], num_clusters: int) -> list[dict]:
    header, rows = read_rows(path)
    assert header == ["path", "cluster", "confidence"]
    assert sorted(row["path"] for row in rows) == readable
    for row in rows:
        assert 0 <= int(row["cluster"]) < num_clusters
        assert 0.0 < float(row["confidence"]) <= 1.0
    return rows


def test_cluster_a_folder(model_dir, image_folder, tmp_path, capsys):
    folder, readable, corrupt = image_folder
    out, montage, sizes = (
        tmp_path / "clusters.csv",
        tmp_path / "montage.png",
        tmp_path / "sizes.png",
    )
    code = main(
        [
            "--model",
            model_dir,
            "--images",
            str(folder),
            "--out",
            str(out),
            "--montage",
            str(montage),
            "--sizes",
            str(sizes),
            "--batch-size",
            "16",
            "--device",
            "cpu",
        ]
    )
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    rows = check_clusters_csv(out, readable, num_clusters=10)
    assert corrupt not in {row["path"] for row in rows}
    assert f"skipping unreadable image {corrupt}" in stderr
    assert "skipped 1 unreadable file(s) of 41" in stderr

    # The montage has one row per non-empty cluster (as save_cluster_montage documents).
    rows_in_montage = len({row["cluster"] for row in rows})
    cell = 32 + MONTAGE_PADDING
    with Image.open(montage) as picture:
        assert picture.format == "PNG"
        assert picture.size == (
            MONTAGE_LABEL_WIDTH + 8 * cell + MONTAGE_PADDING,
            rows_in_montage * cell + MONTAGE_PADDING,
        )
    with Image.open(sizes) as picture:
        assert picture.format == "PNG"
        assert picture.size == (PLOT_PANEL_WIDTH, PLOT_PANEL_HEIGHT)


def test_predictions_match_the_model(model_dir, image_folder, tmp_path):
    folder, readable, _ = image_folder
    out = tmp_path / "clusters.csv"
    assert (
        main(
            [
                "--model",
                model_dir,
                "--images",
                str(folder),
                "--out",
                str(out),
                "--num-clusters",
                "4",
            ]
        )
        == 0
    )
    rows = {row["path"]: row for row in check_clusters_csv(out, readable, num_clusters=4)}
    model = SeCuModel.from_pretrained(model_dir)
    with Image.open(readable[0]) as image:
        ids, confidence = model.predict([image], head=1)
    assert int(rows[readable[0]]["cluster"]) == int(ids[0])
    assert float(rows[readable[0]]["confidence"]) == pytest.approx(float(confidence[0]), abs=1e-5)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--num-clusters", "7"], "no head has 7 clusters; this model's heads have [10, 4]"),
        (["--batch-size", "0"], "expected a positive integer"),
        (["--device", "no-such-device"], "is not a torch device"),
    ],
)
def test_bad_arguments_exit_with_code_2(
    model_dir, image_folder, tmp_path, capsys, arguments, message
):
    folder, _, _ = image_folder
    out = tmp_path / "clusters.csv"
    code = main(["--model", model_dir, "--images", str(folder), "--out", str(out), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_model_or_folder_exit_with_code_2(model_dir, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    code = main(
        [
            "--model",
            str(tmp_path / "no-model"),
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "c.csv"),
        ]
    )
    assert code == 2
    assert "neither an existing local directory" in capsys.readouterr().err
    code = main(
        [
            "--model",
            model_dir,
            "--images",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "c.csv"),
        ]
    )
    assert code == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code = main(
        [
            "--model",
            model_dir,
            "--images",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "c.csv"),
        ]
    )
    assert code == 2
    assert "no image files under" in capsys.readouterr().err


def test_an_output_inside_the_image_folder_is_refused(model_dir, image_folder, capsys):
    folder = image_folder[0]
    before = sorted(folder.rglob("*"))
    for flag, output in (("--out", folder / "clusters.csv"), ("--report", folder / "report")):
        code = main(["--model", model_dir, "--images", str(folder), flag, str(output)])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and "error:" in error
        assert f"{flag} {output} is inside the --images folder {folder}" in error
    assert sorted(folder.rglob("*")) == before  # nothing written into the user's images


def test_only_unreadable_files_exit_with_code_1(model_dir, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not a png")
    code = main(
        ["--model", model_dir, "--images", str(tmp_path / "bad"), "--out", str(tmp_path / "c.csv")]
    )
    assert code == 1
    assert "none of the 1 image files could be read" in capsys.readouterr().err
    assert read_rows(tmp_path / "c.csv") == (["path", "cluster", "confidence"], [])


@pytest.mark.slow
@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="the package is not installed")
def test_console_script(model_dir, image_folder, tmp_path):
    folder, readable, corrupt = image_folder
    out = tmp_path / "clusters.csv"
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env["HF_HUB_OFFLINE"] = "1"
    completed = subprocess.run(
        [
            str(CONSOLE_SCRIPT),
            "--model",
            model_dir,
            "--images",
            str(folder),
            "--out",
            str(out),
            "--montage",
            str(tmp_path / "m.png"),
            "--num-clusters",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    check_clusters_csv(out, readable, num_clusters=10)
    assert corrupt in completed.stderr
    assert (tmp_path / "m.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    bad = subprocess.run(
        [
            str(CONSOLE_SCRIPT),
            "--model",
            model_dir,
            "--images",
            str(folder),
            "--out",
            str(out),
            "--num-clusters",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert bad.returncode == 2
    assert "no head has 3 clusters" in bad.stderr


def test_names_that_are_not_utf8_are_written_losslessly(model_dir, tmp_path, capsys):
    images, _ = load_mnist5k()
    folder = tmp_path / "latin1"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"caf\xe9-\xff.png")  # Latin-1 bytes, not UTF-8
    Image.fromarray(images[0]).save(os.fsdecode(odd), format="PNG")
    Image.fromarray(images[1]).save(folder / "plain.png")
    out = tmp_path / "c.csv"
    assert main(["--model", model_dir, "--images", str(folder), "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as file:
        paths = [row["path"] for row in csv.DictReader(file)]
    assert sorted(os.fsencode(p) for p in paths) == sorted([odd, os.fsencode(folder / "plain.png")])


def test_rows_are_kept_and_resume_does_only_the_rest(model_dir, image_folder, tmp_path, capsys):
    folder, readable, corrupt = image_folder
    out = tmp_path / "c.csv"
    arguments = ["--model", model_dir, "--images", str(folder), "--out", str(out),
                 "--batch-size", "8"]  # fmt: skip
    assert main(arguments) == 0
    complete = out.read_text()
    err = capsys.readouterr().err
    assert f"skipped 1 unreadable file(s) of {len(readable) + 1}: {corrupt}" in err
    # An interrupted run: 13 rows done, the 14th cut in the middle of its line.
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:14]) + lines[14][:10])
    assert main([*arguments, "--resume"]) == 0
    resumed = read_rows(out)[1]
    assert sorted(row["path"] for row in resumed) == readable  # each file exactly once
    assert {r["path"]: r["cluster"] for r in resumed} == {
        r["path"]: r["cluster"] for r in read_rows_text(complete)
    }


def read_rows_text(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines()))

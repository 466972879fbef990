"""Tests for secu_plugin.data: the bundled digits, folder and Hugging Face sources, views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from secu_plugin.data.images import (
    ImageDataset,
    TransformedDataset,
    TwoViewDataset,
    byol_view_transforms,
    digit_view_transforms,
    eval_transform,
    load_mnist5k,
)


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist5k()


def _save_digits(folder: Path, images: np.ndarray, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network for Hugging Face, and a cache inside tmp_path."""
    import datasets

    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    # datasets reads these at import time; patch the live values too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def test_load_mnist5k(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    assert np.bincount(labels).tolist() == [500] * 10
    # Real digits: white strokes on a mostly black background.
    assert images.max() == 255 and 0.1 < images.mean() / 255 < 0.16


def test_mnist5k_dataset() -> None:
    dataset = ImageDataset.mnist5k()
    assert len(dataset) == 5000 and dataset.num_classes == 10
    image, label = dataset[-1]
    assert image.mode == "L" and image.size == (28, 28) and label == 9
    # One split only: evaluation uses the same images.
    test = ImageDataset.from_source("mnist5k", split="test")
    assert len(test) == 5000 and np.array_equal(test.labels, dataset.labels)
    with pytest.raises(IndexError):
        dataset[5000]


def test_folder_with_class_subfolders(tmp_path: Path, mnist) -> None:
    images, labels = mnist
    picks = {3: np.flatnonzero(labels == 3)[:3], 7: np.flatnonzero(labels == 7)[:2]}
    for digit, indices in picks.items():
        _save_digits(tmp_path / f"digit_{digit}", images[indices])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "digit_3" / "README.md").write_text("not an image")

    dataset = ImageDataset.from_folder(tmp_path)
    assert dataset.classes == ["digit_3", "digit_7"]
    assert dataset.num_classes == 2
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1]
    image, label = dataset[3]
    assert label == 1 and image.mode == "L"
    assert np.array_equal(np.asarray(image), images[picks[7][0]])
    assert dataset.skipped == []


def test_folder_extensions_case_insensitive(tmp_path: Path, mnist) -> None:
    images, _ = mnist
    Image.fromarray(images[0]).save(tmp_path / "a.PNG")
    Image.fromarray(images[1]).convert("RGB").save(tmp_path / "b.JPeG")
    Image.fromarray(images[2]).save(tmp_path / "c.bmp")
    dataset = ImageDataset.from_folder(tmp_path)
    assert [Path(p).name for p in dataset.paths] == ["a.PNG", "b.JPeG", "c.bmp"]
    assert dataset[1][0].mode == "RGB"


def test_flat_folder_is_unlabeled(tmp_path: Path, mnist) -> None:
    images, _ = mnist
    _save_digits(tmp_path, images[:4])
    dataset = ImageDataset.from_folder(tmp_path)
    assert len(dataset) == 4
    assert dataset.labels is None and dataset.num_classes is None
    assert [dataset[i][1] for i in range(4)] == [-1, -1, -1, -1]
    # from_source sends a plain directory to from_folder.
    assert len(ImageDataset.from_source(str(tmp_path))) == 4


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ImageDataset.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images"):
        ImageDataset.from_folder(tmp_path)


def test_corrupt_image_raises_naming_the_file(tmp_path: Path, mnist) -> None:
    images, _ = mnist
    _save_digits(tmp_path, images[:2])
    corrupt = tmp_path / "img_broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    dataset = ImageDataset.from_folder(tmp_path)
    assert len(dataset) == 3
    dataset[0]
    broken_index = dataset.paths.index(str(corrupt))
    with pytest.raises(ValueError, match="img_broken.png"):
        dataset[broken_index]


def test_skip_corrupt_drops_and_counts(tmp_path: Path, mnist) -> None:
    images, labels = mnist
    _save_digits(tmp_path / "one", images[labels == 1][:3])
    _save_digits(tmp_path / "two", images[labels == 2][:2])
    (tmp_path / "one" / "zz_empty.jpg").write_bytes(b"")
    # A truncated PNG: the header verifies, only a full decode notices.
    good = (tmp_path / "two" / "img000.png").read_bytes()
    (tmp_path / "two" / "zz_truncated.png").write_bytes(good[: len(good) // 2])

    dataset = ImageDataset.from_folder(tmp_path, skip_corrupt=True)
    assert len(dataset) == 5
    assert sorted(Path(p).name for p in dataset.skipped) == ["zz_empty.jpg", "zz_truncated.png"]
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1]
    assert all(dataset[i][0].size == (28, 28) for i in range(len(dataset)))
    via_source = ImageDataset.from_source(str(tmp_path), skip_corrupt=True)
    assert len(via_source.skipped) == 2


def test_folder_train_test_split(tmp_path: Path, mnist) -> None:
    images, _ = mnist
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("a", "b"):
            _save_digits(tmp_path / split / cls, images[:count])
    train = ImageDataset.from_source(str(tmp_path), split="train")
    test = ImageDataset.from_source(str(tmp_path), split="test")  # falls back to val/
    assert len(train) == 6 and len(test) == 4
    assert train.classes == test.classes == ["a", "b"]


def test_from_source_missing_path() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ImageDataset.from_source("./no/such/folder")


def test_hf_parquet(tmp_path: Path, offline_hf: Path, mnist) -> None:
    import datasets

    images, labels = mnist
    picks = np.array([0, 500, 1000, 4999])
    features = datasets.Features(
        {"digit": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    hf = datasets.Dataset.from_dict(
        {"digit": [Image.fromarray(images[i]) for i in picks], "label": labels[picks].tolist()},
        features=features,
    )
    parquet = tmp_path / "digits.parquet"
    hf.to_parquet(str(parquet))

    dataset = ImageDataset.from_source(str(parquet))
    assert len(dataset) == 4
    assert dataset.labels.tolist() == [0, 1, 2, 9]
    assert dataset.num_classes == 10 and dataset.classes[9] == "9"
    image, label = dataset[3]
    assert label == 9 and np.array_equal(np.asarray(image), images[4999])
    # The given files are the requested split.
    assert len(ImageDataset.from_source(str(parquet), split="test")) == 4


def test_hf_imagefolder_with_metadata(tmp_path: Path, offline_hf: Path, mnist) -> None:
    images, labels = mnist
    root = tmp_path / "imagefolder"
    for split, indices in (("train", [0, 1, 600]), ("test", [1200, 1800])):
        paths = _save_digits(root / split, images[indices])
        rows = "\n".join(f"{p.name},{labels[i]}" for p, i in zip(paths, indices))
        (root / split / "metadata.csv").write_text("file_name,label\n" + rows + "\n")

    train = ImageDataset.from_source(str(root), split="train")
    test = ImageDataset.from_source(str(root), split="test")
    assert len(train) == 3 and len(test) == 2
    assert sorted(train.labels.tolist()) == [0, 0, 1]
    assert sorted(test.labels.tolist()) == [2, 3]
    image, label = test[0]
    assert image.size == (28, 28) and label in (2, 3)


def test_hf_column_detection_and_errors() -> None:
    import datasets

    no_image = datasets.Dataset.from_dict({"x": [1, 2]})
    with pytest.raises(ValueError, match="no image column"):
        ImageDataset.from_hf(no_image)
    two = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (4, 4))] * 2, "fine_label": [5, 7], "coarse_label": [0, 1]},
        features=datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.Value("int64"),
                "coarse_label": datasets.Value("int64"),
            }
        ),
    )
    assert ImageDataset.from_hf(two).labels.tolist() == [5, 7]
    assert ImageDataset.from_hf(two, label_column="coarse_label").labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="not in columns"):
        ImageDataset.from_hf(two, label_column="nope")


def test_two_view_dataset(mnist) -> None:
    images, labels = mnist
    dataset = ImageDataset.from_arrays(images[:8], labels[:8])
    view1, view2 = digit_view_transforms(erase_prob=0.0)
    pairs = TwoViewDataset(dataset, view1, view2)
    torch.manual_seed(0)
    a, b, index = pairs[5]
    assert index == 5 and len(pairs) == 8
    assert a.shape == b.shape == (1, 28, 28) and a.dtype == torch.float32
    assert not torch.equal(a, b)


def test_byol_views_of_grey_image(mnist) -> None:
    images, _ = mnist
    image = Image.fromarray(images[0])
    view1, view2 = byol_view_transforms(32, min_scale=0.2, mean=(0.5,), std=(0.5,))
    torch.manual_seed(0)
    a, b = view1(image), view2(image)
    assert a.shape == b.shape == (3, 32, 32)
    grey_view1, _ = byol_view_transforms(32, min_scale=0.2, grayscale_input=True)
    assert grey_view1(image).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="min_scale"):
        byol_view_transforms(32, min_scale=0.0)


def test_digit_view_parameters() -> None:
    with pytest.raises(ValueError, match="translate"):
        digit_view_transforms(translate=1.5)
    plain, _ = digit_view_transforms(
        rotation=0, translate=0, scale=(1.0, 1.0), shear=0, min_scale=1.0, erase_prob=0
    )
    image = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 255)
    # Without any randomness left the views equal the evaluation transform.
    expected = eval_transform(28, (0.1307,), (0.3081,), channels=1)(image)
    assert torch.allclose(plain(image), expected, atol=1e-6)


def test_transformed_dataset_and_eval_transform(mnist) -> None:
    images, labels = mnist
    dataset = TransformedDataset(
        ImageDataset.from_arrays(images[:4], labels[:4]), eval_transform(32, channels=3)
    )
    x, label, index = dataset[2]
    assert x.shape == (3, 32, 32) and label == labels[2] and index == 2
    with pytest.raises(ValueError, match="channels"):
        eval_transform(32, channels=2)
    with pytest.raises(ValueError, match="mean"):
        eval_transform(32, mean=(0.1, 0.2), channels=3)

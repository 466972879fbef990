"""Tests for secu_plugin.data: the bundled digits, folder and Hugging Face sources, views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from secu_plugin.data import (
    ImageDataset,
    TransformedDataset,
    TwoViewDataset,
    byol_views,
    digit_views,
    eval_transform,
    load_mnist5k,
)

GREY_28 = {"input_size": (1, 28, 28), "interpolation": "bilinear", "mean": (0.1307,),
           "std": (0.3081,), "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
RGB_32 = {**GREY_28, "input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3}


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
    pairs = TwoViewDataset(dataset, digit_views(erase_prob=0.0))
    torch.manual_seed(0)
    a, b, index = pairs[5]
    assert index == 5 and len(pairs) == 8
    assert a.shape == b.shape == (1, 28, 28) and a.dtype == torch.float32
    assert not torch.equal(a, b)


def test_byol_views_of_grey_image(mnist) -> None:
    images, _ = mnist
    image = Image.fromarray(images[0])
    torch.manual_seed(0)
    a, b = byol_views(32, min_scale=0.2, mean=(0.5,), std=(0.5,))(image)
    assert a.shape == b.shape == (3, 32, 32)
    grey_view0, _ = byol_views(32, min_scale=0.2, grayscale_input=True)(image)
    assert grey_view0.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="min_scale"):
        byol_views(32, min_scale=0.0)


def test_digit_view_parameters() -> None:
    with pytest.raises(ValueError, match="translate"):
        digit_views(translate=1.5)
    plain = digit_views(
        rotation=0, translate=0, scale=(1.0, 1.0), shear=0, min_scale=1.0, erase_prob=0
    )
    image = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 255)
    # Without any randomness left the views equal the evaluation transform.
    expected = eval_transform(GREY_28, in_chans=1)(image)
    for view in plain(image):
        assert torch.allclose(view, expected, atol=1e-6)


def test_transformed_dataset_and_eval_transform(mnist) -> None:
    images, labels = mnist
    dataset = TransformedDataset(
        ImageDataset.from_arrays(images[:4], labels[:4]), eval_transform(RGB_32, in_chans=3)
    )
    x, label, index = dataset[2]
    assert x.shape == (3, 32, 32) and label == labels[2] and index == 2
    with pytest.raises(ValueError, match="in_chans"):
        eval_transform(RGB_32, in_chans=2)
    from secu_plugin.models import SeCuNetwork

    with pytest.raises(ValueError, match="mean"):
        SeCuNetwork("secu_convnet_tiny", mean=(0.1, 0.2))


# ---- Every documented layout gives the right classes (known files, known labels).


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _digits(mnist, per_class: int = 3, classes=(0, 3, 7)):
    images, labels = mnist
    return [(c, images[np.flatnonzero(labels == c)[i]]) for c in classes for i in range(per_class)]


def _label_of(dataset: ImageDataset, path: Path) -> str:
    return dataset.classes[dataset.labels[dataset.paths.index(str(path))]]


def test_class_folders_give_their_labels(mnist, tmp_path: Path) -> None:
    for digit, image in _digits(mnist):
        _write(tmp_path / f"digit{digit}" / f"{digit}-{image.sum()}.png", image)
    dataset = ImageDataset.from_source(str(tmp_path))
    assert dataset.classes == ["digit0", "digit3", "digit7"] and dataset.split == "train"
    for path in sorted(tmp_path.rglob("*.png")):
        assert _label_of(dataset, path) == path.parent.name


@pytest.mark.parametrize("eval_folder", [None, "test", "val"])
def test_split_folders_are_splits_not_classes(mnist, tmp_path: Path, eval_folder) -> None:
    for digit, image in _digits(mnist):
        _write(tmp_path / "train" / str(digit) / f"{image.sum()}.png", image)
    if eval_folder:
        for digit, image in _digits(mnist, per_class=2, classes=(3, 7)):
            _write(tmp_path / eval_folder / str(digit) / f"e{image.sum()}.png", image)
    train = ImageDataset.from_source(str(tmp_path), split="train")
    test = ImageDataset.from_source(str(tmp_path), split="test")
    assert train.classes == ["0", "3", "7"] and len(train) == 9 and train.split == "train"
    for path in (tmp_path / "train").rglob("*.png"):
        assert _label_of(train, path) == path.parent.name
    if eval_folder is None:  # no evaluation split: evaluation uses the training images
        assert test.split == "train" and test.paths == train.paths
    else:
        assert test.split == ("test" if eval_folder == "test" else "validation")
        assert test.classes == ["3", "7"] and len(test) == 4
        for path in (tmp_path / eval_folder).rglob("*.png"):
            assert _label_of(test, path) == path.parent.name


def test_flat_folder_has_no_labels_and_one_class_warns(mnist, tmp_path: Path) -> None:
    for i, (_, image) in enumerate(_digits(mnist)):
        _write(tmp_path / "flat" / f"{i}.png", image)
    flat = ImageDataset.from_source(str(tmp_path / "flat"))
    assert flat.labels is None and flat.classes is None and len(flat) == 9
    for i, (_, image) in enumerate(_digits(mnist, classes=(5,))):
        _write(tmp_path / "one" / "fives" / f"{i}.png", image)
    with pytest.warns(UserWarning, match="same class"):
        ImageDataset.from_source(str(tmp_path / "one"))


def test_imagefolder_and_parquet_layouts(mnist, tmp_path: Path, offline_hf) -> None:
    import datasets

    digits = _digits(mnist)
    for digit, image in digits:
        _write(tmp_path / "hf" / "train" / f"{digit}-{image.sum()}.png", image)
    rows = [f"{digit}-{image.sum()}.png,{digit}" for digit, image in digits]
    (tmp_path / "hf" / "train" / "metadata.csv").write_text("file_name,label\n" + "\n".join(rows))
    hf = ImageDataset.from_source(str(tmp_path / "hf"))
    assert sorted(hf.labels.tolist()) == sorted(d for d, _ in digits)
    table = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(im) for _, im in digits], "label": [d for d, _ in digits]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    table.to_parquet(str(tmp_path / "digits.parquet"))
    parquet = ImageDataset.from_source(str(tmp_path / "digits.parquet"))
    assert parquet.labels.tolist() == [d for d, _ in digits]
    first, label = parquet[4]
    assert label == digits[4][0] and np.array_equal(np.asarray(first), digits[4][1])


def test_hugging_face_sets_that_cannot_be_clustered_say_what_to_do() -> None:
    import datasets

    table = datasets.Dataset.from_dict(
        {"image": [Image.new("L", (4, 4))] * 2, "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    with pytest.raises(ValueError, match="streaming=False"):
        ImageDataset.from_hf(table.to_iterable_dataset())
    with pytest.raises(ValueError, match="pass the raw data set"):
        ImageDataset.from_hf(table.with_transform(lambda batch: batch))
    with pytest.raises(ValueError, match="ImageDataset.from_hf"):
        TwoViewDataset(table, digit_views())
    assert len(TwoViewDataset(ImageDataset.from_hf(table), digit_views())) == 2


def test_views_survive_pickling_for_spawned_workers(mnist) -> None:
    import pickle

    images, labels = mnist
    pairs = TwoViewDataset(
        ImageDataset.from_arrays(images[:4], labels[:4] * 0 + np.arange(4)), byol_views(32), seed=3
    )
    copy = pickle.loads(pickle.dumps(pairs))
    for index in range(4):
        assert all(torch.equal(a, b) for a, b in zip(pairs[index][:2], copy[index][:2]))


def test_with_indices_keeps_every_field_of_torchvision_lightly_and_hf_items():
    import datasets
    from lightly.data import LightlyDataset
    from torchvision import datasets as tv_datasets

    from secu_plugin.data import with_indices

    torchvision_set = tv_datasets.FakeData(6, image_size=(3, 8, 8), num_classes=3)
    _image, target, index = with_indices(torchvision_set)[4]
    assert target == torchvision_set[4][1] and index == 4
    lightly_set = LightlyDataset.from_torch_dataset(torchvision_set)
    _, target, fname, index = with_indices(lightly_set)[5]
    assert (target, fname, index) == (torchvision_set[5][1], "5", 5)
    hf_set = datasets.Dataset.from_dict({"label": [3, 1, 2]})
    assert with_indices(hf_set)[2] == {"label": 2, "index": 2}
    streaming = datasets.IterableDataset.from_generator(lambda: iter([{"label": 1}]))
    with pytest.raises(ValueError, match="streaming=False"):
        with_indices(streaming)

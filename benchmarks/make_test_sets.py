"""Writes small real image sets as PNG folders, in the layouts users train on, and their manifest.

Two roles (docs/heldout.md): **tune** sets, whose scores may be looked at when choosing
defaults, and **held-out** sets, scored only to check a change, never to choose one.

Tune sets come from data available offline (scikit-learn's digits, the bundled MNIST-5k):

- ``mnist5k``: the bundled set itself, read by the recipes as ``--data mnist5k`` (not written);
- ``digits8``: scikit-learn's 1,797 digits, 8 x 8, 17 grey levels (0..16 scaled to 0..255),
  as ``ROOT/<class>/``;
- ``mnist1797``: a random 1,797-image subset of MNIST-5k, 28 x 28, as ``ROOT/train/<class>/``
  only (no evaluation split: the run scores its training images);
- ``mnist8``: MNIST-5k reduced to 8 x 8 (box filter), ``ROOT/train/<class>/`` (4,000) and
  ``ROOT/test/<class>/`` (1,000, 100 per class);
- ``color32``: 2,000 MNIST-5k digits at 32 x 32 in RGB, each with its own random foreground
  and background colours (at least 120 apart in RGB), as ``ROOT/<class>/``;
- ``mnist56flat``: the 5,000 MNIST-5k digits at 56 x 56 in one flat folder (no labels: a run
  reports no ACC); their labels are kept aside in ``OUT/mnist56flat_labels.csv``
  (``file,label``) to score the clusters afterwards (``benchmarks/kmeans_baseline.py --score``).

Held-out sets are letters, never digits, notMNIST-style: ``lettersK_{grey,colour}{28,64}``,
the first K of A-T (K = 5, 7, 10, 13, 20), ``--per_class`` images of each (default 500) as
``ROOT/train/<letter>/``, rendered from every installed typeface that draws them (found by
globbing ``--fonts`` folders for ``*.ttf``/``*.otf``), each at a random scale (55-95 % of the
frame) and position; grey (white on black) or coloured (random foreground and background).
Which typefaces are installed changes the sets: the manifest lists them. On Debian::

    apt-get install fonts-dejavu-core fonts-liberation fonts-liberation2 fonts-freefont-ttf \\
        fonts-urw-base35 fonts-crosextra-carlito fonts-crosextra-caladea fonts-open-sans \\
        fonts-texgyre fonts-linuxlibertine fonts-go fonts-lato fonts-croscore fonts-cantarell \\
        fonts-ebgaramond fonts-roboto-unhinted fonts-noto-core

``--flat``: each set as one flat folder ``ROOT/*.png`` (shuffled names), labels aside in
``OUT/NAME_labels.csv`` as ``mnist56flat``: no path can read K from class folders.

``OUT/sets.json``: the provenance (``benchmarks/provenance.py``), the seed, the typefaces, and
per set its name, role, source, classes, images, size, colour, layout and ``data`` (what to
pass as ``--data``). Deterministic given the seed and the installed typefaces.

Usage::

    python benchmarks/make_test_sets.py --out /tmp/secu_sets          # all sets
    python benchmarks/make_test_sets.py --out /tmp/secu_sets --sets digits8 letters10_grey28
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import print_line, start_record, write_json
from secu_plugin.data import load_mnist5k


def _save(image: np.ndarray, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name)


def _write_classes(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    """``folder/<label>/<index>.png``; the index is the image's position in ``images``."""
    for index, (image, label) in enumerate(zip(images, labels)):
        _save(image, folder / str(int(label)), f"{index:05d}.png")


def _resize(images: np.ndarray, size: int, resample: int) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), resample)) for im in images]
    )


def make_digits8(root: Path, seed: int) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    _write_classes(images, digits.target, root)
    return {"layout": "ROOT/<class>/", "images": len(images), "size": "8x8", "mode": "L"}


def make_mnist1797(root: Path, seed: int) -> dict:
    images, labels = load_mnist5k()
    subset = np.sort(np.random.default_rng(seed).permutation(len(images))[:1797])
    _write_classes(images[subset], labels[subset], root / "train")
    return {"layout": "ROOT/train/<class>/", "images": 1797, "size": "28x28", "mode": "L"}


def make_mnist8(root: Path, seed: int) -> dict:
    images, labels = load_mnist5k()
    small = _resize(images, 8, Image.Resampling.BOX)
    rng = np.random.default_rng(seed)
    # 100 test images per class (MNIST-5k has 500 per class), the rest for training.
    test = np.zeros(len(images), dtype=bool)
    for label in np.unique(labels):
        test[rng.permutation(np.flatnonzero(labels == label))[:100]] = True
    for split, chosen in (("train", ~test), ("test", test)):
        index = np.flatnonzero(chosen)
        for i in index:
            _save(small[i], root / split / str(int(labels[i])), f"{i:05d}.png")
    return {
        "layout": "ROOT/train/<class>/ + ROOT/test/<class>/",
        "images": len(images),  # 4,000 train + 1,000 test
        "size": "8x8",
        "mode": "L",
    }


def _contrasting_colours(rng: np.random.Generator, min_distance: float = 120.0):
    while True:
        foreground, background = rng.integers(0, 256, size=(2, 3)).astype(np.float64)
        if np.linalg.norm(foreground - background) >= min_distance:
            return foreground, background


def make_color32(root: Path, seed: int) -> dict:
    images, labels = load_mnist5k()
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.permutation(len(images))[:2000])
    masks = _resize(images[subset], 32, Image.Resampling.BILINEAR).astype(np.float64) / 255.0
    coloured = []
    for mask in masks:
        foreground, background = _contrasting_colours(rng)
        mixed = background * (1.0 - mask[..., None]) + foreground * mask[..., None]
        coloured.append(np.clip(np.round(mixed), 0, 255).astype(np.uint8))
    _write_classes(np.stack(coloured), labels[subset], root)
    return {"layout": "ROOT/<class>/", "images": 2000, "size": "32x32", "mode": "RGB"}


def flatten(root: Path, seed: int) -> dict:
    """Moves the images of ``root``'s class folders into ``root`` under shuffled names; their
    class goes to ``ROOT_labels.csv``.

    Examples:
        >>> import tempfile; root = Path(tempfile.mkdtemp()) / "set"
        >>> _write_classes(np.zeros((4, 2, 2), np.uint8), np.array([0, 0, 1, 1]), root)
        >>> flatten(root, 0)["images"], sorted(p.name for p in root.iterdir())[:2]
        (4, ['00000.png', '00001.png'])
    """
    files = sorted(root.rglob("*.png"))
    classes = [p.parent.name for p in files]
    rows = []
    for position, i in enumerate(np.random.default_rng(seed).permutation(len(files))):
        name = f"{position:05d}.png"
        files[i].rename(root / name)  # no clash: the class folders' names are not NNNNN.png
        rows.append((name, classes[i]))
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        folder.rmdir()  # emptied class folders, deepest first
    with open(root.parent / f"{root.name}_labels.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return {"layout": "ROOT/*.png (flat, labels aside)", "images": len(rows)}


def make_mnist56flat(root: Path, seed: int) -> dict:
    images, labels = load_mnist5k()
    large = _resize(images, 56, Image.Resampling.BILINEAR)
    order = np.random.default_rng(seed).permutation(len(images))  # no class order in the names
    rows = []
    for position, i in enumerate(order):
        name = f"{position:05d}.png"
        _save(large[i], root, name)
        rows.append((name, int(labels[i])))
    with open(root.parent / f"{root.name}_labels.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    flat = {"layout": "ROOT/*.png (flat, labels aside)", "images": 5000}
    return {**flat, "size": "56x56", "mode": "L"}


# ---- Held-out sets: letters rendered from installed typefaces (notMNIST-style).

FONT_DIRS = [
    "/usr/share/fonts",
    "/usr/share/texmf/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
]
FONT_PACKAGES = (
    "fonts-dejavu-core fonts-liberation fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 "
    "fonts-crosextra-carlito fonts-crosextra-caladea fonts-open-sans fonts-texgyre "
    "fonts-linuxlibertine fonts-go fonts-lato fonts-croscore fonts-cantarell fonts-ebgaramond "
    "fonts-roboto-unhinted fonts-noto-core"
)
# Typefaces whose letter code points draw something else: symbols, dingbats (URW's is named
# D050000L), keycaps (Linux Biolinum Keyboard: each letter in a box).
NOT_LETTERS = ("symbol", "dingbat", "d050000l", "keyboard", "math", "emoji", "music", "icon")
LETTERS = "ABCDEFGHIJKLMNOPQRST"
GLYPH_PT = 64  # glyphs are rendered at this size, cropped, then scaled down to each image


def _glyph(font, letter: str) -> np.ndarray:
    """The letter's anti-aliased ink (uint8, 0 = none), cropped to its bounding box."""
    from PIL import ImageDraw

    canvas = Image.new("L", (3 * GLYPH_PT, 3 * GLYPH_PT), 0)
    ImageDraw.Draw(canvas).text((GLYPH_PT // 2, GLYPH_PT // 2), letter, fill=255, font=font)
    box = canvas.getbbox()
    return np.asarray(canvas.crop(box)) if box else np.zeros((0, 0), np.uint8)


def find_fonts(dirs: list[str], letters: str = LETTERS) -> list[tuple[str, dict]]:
    """``(path, glyphs)`` of every typeface under ``dirs`` (``*.ttf``, ``*.otf``, sorted by
    path) that draws each of ``letters`` visibly and differently from its missing-glyph box and
    from one another; a typeface whose letters look exactly like an earlier one's (the same
    Latin letters shipped in several files) is kept once."""
    from PIL import ImageFont

    paths = sorted(
        {
            os.fspath(p)
            for d in dirs
            for pattern in ("*.ttf", "*.otf", "*.TTF", "*.OTF")
            for p in Path(os.path.expanduser(d)).rglob(pattern)
        }
    )
    fonts, seen = [], set()
    for path in paths:
        try:
            font = ImageFont.truetype(path, GLYPH_PT)
            family = " ".join(font.getname()).lower()
            glyphs = {letter: _glyph(font, letter) for letter in letters}
            missing = _glyph(font, "\U000f0000")  # a private-use code point: the notdef box
        except OSError:  # not a font FreeType can read
            continue
        if any(word in family for word in NOT_LETTERS):
            continue
        drawn = [g.tobytes() + bytes(g.shape) for g in glyphs.values()]
        if any(g.size == 0 or np.array_equal(g, missing) for g in glyphs.values()):
            continue
        if len(set(drawn)) < len(drawn) or b"".join(drawn) in seen:
            continue
        seen.add(b"".join(drawn))
        fonts.append((path, glyphs))
    return fonts


def _place(glyph: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The glyph scaled to 55-95 % of the image (its longer side, aspect kept) at a random
    position inside a ``size`` x ``size`` frame: float ink in [0, 1]."""
    scale = rng.uniform(0.55, 0.95) * size / max(glyph.shape)
    height = max(1, round(glyph.shape[0] * scale))
    width = max(1, round(glyph.shape[1] * scale))
    ink = np.asarray(Image.fromarray(glyph).resize((width, height), Image.Resampling.LANCZOS))
    top, left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
    frame = np.zeros((size, size))
    frame[top : top + height, left : left + width] = ink / 255.0
    return frame


def make_letters(
    root: Path, seed: int, fonts: list, num_classes: int, size: int, colour: bool, per_class: int
) -> dict:
    """``per_class`` images of each of the first ``num_classes`` letters as
    ``ROOT/train/<letter>/``: every typeface used about equally often in each class, each image
    at its own random scale and position; white on black, or ``colour``: random foreground and
    background colours at least 120 apart in RGB."""
    rng = np.random.default_rng([seed, num_classes, size, int(colour)])
    for letter in LETTERS[:num_classes]:
        order = rng.permutation(len(fonts))
        for index in range(per_class):
            _, glyphs = fonts[order[index % len(fonts)]]
            ink = _place(glyphs[letter], size, rng)
            if colour:
                foreground, background = _contrasting_colours(rng)
                mixed = background * (1.0 - ink[..., None]) + foreground * ink[..., None]
            else:
                mixed = 255.0 * ink
            image = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
            _save(image, root / "train" / letter, f"{index:05d}.png")
    return {
        "layout": "ROOT/train/<class>/",
        "images": num_classes * per_class,
        "size": f"{size}x{size}",
        "mode": "RGB" if colour else "L",
    }


# ---- The sets: name -> (maker, role, source, class names). "tune": scores may guide the
# defaults; "held_out": scored only to check a change, never to choose one.

DIGITS = [str(d) for d in range(10)]
TUNE = {
    "digits8": (make_digits8, "scikit-learn digits", DIGITS),
    "mnist1797": (make_mnist1797, "MNIST-5k (bundled)", DIGITS),
    "mnist8": (make_mnist8, "MNIST-5k (bundled)", DIGITS),
    "color32": (make_color32, "MNIST-5k (bundled)", DIGITS),
    "mnist56flat": (make_mnist56flat, "MNIST-5k (bundled)", DIGITS),
}
HELD_OUT = {  # name -> (classes, size, colour)
    "letters10_grey28": (10, 28, False),
    "letters10_grey64": (10, 64, False),
    "letters10_colour28": (10, 28, True),
    "letters10_colour64": (10, 64, True),
    "letters5_grey28": (5, 28, False),
    "letters20_grey28": (20, 28, False),
    "letters5_colour64": (5, 64, True),
    "letters20_colour64": (20, 64, True),
    # K between the usual 5, 10, 20 (docs/k_selection.md: the held-out check of the K signal)
    "letters7_grey28": (7, 28, False),
    "letters13_grey28": (13, 28, False),
    "letters7_colour64": (7, 64, True),
    "letters13_colour64": (13, 64, True),
}
BUILT_IN = {  # tune sets the recipes read by name: nothing to write
    "mnist5k": {
        "role": "tune",
        "source": "MNIST-5k (bundled)",
        "classes": DIGITS,
        "images": 5000,
        "size": "28x28",
        "colour": "grey",
        "layout": "built-in",
        "data": "mnist5k",
    },
}
SETS = [*BUILT_IN, *TUNE, *HELD_OUT]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder that receives one folder per set")
    parser.add_argument("--sets", nargs="*", default=SETS, choices=SETS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per_class", type=int, default=500, help="letter images per class")
    parser.add_argument("--fonts", nargs="*", default=FONT_DIRS, help="folders searched for fonts")
    parser.add_argument("--flat", action="store_true", help="flat folders, labels aside")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per_class must be positive, got {args.per_class}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = start_record(seed=args.seed, sets=[])
    fonts = None
    if any(name in HELD_OUT for name in args.sets):
        fonts = find_fonts(args.fonts)
        if not fonts:
            raise SystemExit(
                f"no font drawing the letters {LETTERS} under {' '.join(args.fonts)}: install "
                f"some (Debian: apt-get install {FONT_PACKAGES}) or pass --fonts DIR"
            )
        manifest["fonts"] = [path for path, _ in fonts]
    for name in args.sets:
        if name in BUILT_IN:
            manifest["sets"].append({"name": name, **BUILT_IN[name]})
            continue
        root = out / name
        if root.exists():
            shutil.rmtree(root)
        if name in TUNE:
            maker, source, classes = TUNE[name]
            written = maker(root, args.seed)
            role = "tune"
        else:
            num_classes, size, colour = HELD_OUT[name]
            written = make_letters(
                root, args.seed, fonts, num_classes, size, colour, args.per_class
            )
            source, classes = f"letters from {len(fonts)} typefaces", list(LETTERS[:num_classes])
            role = "held_out"
        if args.flat and name != "mnist56flat":
            written = {**written, **flatten(root, args.seed)}
        entry = {
            "name": name,
            "role": role,
            "source": source,
            "classes": classes,
            "images": written["images"],
            "size": written["size"],
            "colour": "rgb" if written["mode"] == "RGB" else "grey",
            "layout": written["layout"],
            "data": os.fspath(root),
        }
        if written["layout"].startswith("ROOT/*.png"):
            entry["labels_csv"] = os.fspath(out / f"{name}_labels.csv")
        manifest["sets"].append(entry)
        print_line(entry)
    write_json(out / "sets.json", manifest)
    return manifest


if __name__ == "__main__":
    main()

"""Robust loading: a class-folder dataset with every awkward file we know of is decoded to
correct RGB or skipped with one warning; unusable classes and splits fail up front."""

import io
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from pipnet_tf.data import decode, pipeline
from pipnet_tf.data.sources import DatasetUnavailableError
from trainers.configs import PRESETS
from pipnet_tf.data.datasets import build_data

CLASS = "Vögel mit Leerzeichen"
BAD = {"corrupt.jpg", "truncated.jpg", "truncated.png", "notes.txt"}


def _rgb(h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, w)[None, :]
    image[..., 1] = np.linspace(0, 255, h)[:, None]
    image[h // 2:, : w // 2, 2] = rng.integers(0, 256, (h - h // 2, w // 2))
    return image


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95, **kwargs)
    return out.getvalue()


def _write_cases(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_rgb())
    rgb.save(folder / "ok.jpg", quality=95)
    rgb.convert("L").save(folder / "grey.jpg", quality=95)
    rgb.convert("RGBA").save(folder / "rgba.png")
    palette = rgb.convert("P")
    palette.save(folder / "palette.png", transparency=0)
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(_rgb()[..., 0].astype(np.uint16) * 257).save(folder / "grey16.png")
    (folder / "rgb16.png").write_bytes(
        tf.io.encode_png(tf.constant(_rgb().astype(np.uint16) * 257)).numpy())
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(folder / "tiny.png")
    Image.fromarray(_rgb(900, 1200)).save(folder / "large.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    (folder / "rotated.jpg").write_bytes(_jpeg_bytes(rgb, exif=exif))
    rgb.save(folder / "really_a_gif.jpg", "GIF")
    rgb.save(folder / "bitmap.bmp")
    (folder / "corrupt.jpg").write_bytes(os.urandom(2000))
    data = _jpeg_bytes(Image.fromarray(_rgb(200, 200, seed=1)))
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    png = io.BytesIO()
    Image.fromarray(_rgb(200, 200, seed=2)).save(png, "PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "notes.txt").write_text("not an image")


def _reference(path: pathlib.Path) -> np.ndarray:
    """What the file should decode to: PIL, EXIF applied, 16-bit scaled to 8."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I;16"):
            arr = np.round(np.asarray(img, np.float64) / 257).astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=-1)
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("robust")
    _write_cases(root / CLASS)
    return root / CLASS


@pytest.fixture
def warnings_seen(monkeypatch):
    seen = []
    monkeypatch.setattr(decode.logging, "warning", lambda msg, *args: seen.append(msg % args))
    return seen


def test_every_case_is_decoded_to_rgb_or_skipped_with_one_warning(cases, tmp_path,
                                                                  warnings_seen):
    paths = sorted(str(p) for p in cases.iterdir())
    prepared = decode.prepare_images(paths, tmp_path / "converted")
    names = [pathlib.Path(p).name for p in paths]
    assert {n for n, k in zip(names, prepared.keep) if not k} == BAD
    assert len(warnings_seen) == 1
    assert f"Skipping {len(BAD)} of {len(paths)}" in warnings_seen[0]
    assert all(name in warnings_seen[0] for name in BAD)
    for name, keep, path, size, original in zip(names, prepared.keep, prepared.paths,
                                                prepared.sizes, paths):
        if not keep:
            continue
        got = pipeline.decode_image(tf.constant(path)).numpy()
        want = _reference(pathlib.Path(original))
        assert got.shape == want.shape, name
        assert tuple(size) == (want.shape[1], want.shape[0]), name
        tolerance = 8 if name in ("ok.jpg", "grey.jpg", "large.jpg") else 0  # JPEG decoders
        assert np.abs(got - want.astype(np.float32)).max() <= tolerance, name
    converted = {n for n, p, o in zip(names, prepared.paths, paths) if p != o and n not in BAD}
    assert converted == {"cmyk.jpg", "rotated.jpg", "really_a_gif.jpg", "bitmap.bmp"}
    cmyk = names.index("cmyk.jpg")  # TF alone would decode CMYK to wrong colours
    got = pipeline.decode_image(tf.constant(prepared.paths[cmyk])).numpy()
    assert np.abs(got - _rgb()).mean() < 3
    rotated = names.index("rotated.jpg")
    assert tuple(prepared.sizes[rotated]) == (24, 32)  # portrait after the EXIF rotation


def test_conversions_are_cached_and_huge_images_downscaled(cases, tmp_path):
    large = str(cases / "large.jpg")
    first = decode.prepare_images([large], tmp_path, max_pixels=100_000)
    assert first.converted == 1 and tuple(first.sizes[0]) == (1200, 900)  # original size
    with Image.open(first.paths[0]) as img:
        assert img.width * img.height <= 100_000
        assert abs(img.width / img.height - 4 / 3) < 0.02
    stamp = os.stat(first.paths[0]).st_mtime_ns
    again = decode.prepare_images([large], tmp_path, max_pixels=100_000)
    assert again.paths == first.paths and os.stat(again.paths[0]).st_mtime_ns == stamp


def _config(root: pathlib.Path, tmp_path: pathlib.Path):
    return PRESETS["cub"].replace(dataset=f"folder:{root}", image_size=16, batch_size=2,
                                  batch_size_pretrain=2, cache_dir=str(tmp_path / "cache"),
                                  validation_size=0.25)


def test_build_data_on_the_awkward_folder(cases, tmp_path, warnings_seen):
    root = cases.parent
    (root / "empty class").mkdir(exist_ok=True)
    plain = root / "plain"
    plain.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(_rgb(seed=i)).save(plain / f"{i}.png")
    data = build_data(_config(root, tmp_path))
    assert data.class_names == [CLASS, "plain"] and len(warnings_seen) == 2  # train and test
    view1, view2, _ = next(iter(data.train.epochs(0, 1)))
    assert view1.shape == view2.shape == (2, 16, 16, 3)
    images = np.concatenate([b[0].numpy() for b in data.project.dataset(4)])
    assert images.shape[1:] == (16, 16, 3) and np.isfinite(images).all()
    assert len(images) + len(data.test) == len(list(cases.iterdir())) - len(BAD) + 4


def test_a_single_class_is_an_error(tmp_path):
    root = tmp_path / "data" / "only"
    root.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(_rgb(seed=i)).save(root / f"{i}.png")
    with pytest.raises(DatasetUnavailableError, match="needs at least 2"):
        build_data(_config(root.parent, tmp_path))


def test_class_without_usable_images_is_an_error(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        _write_cases(root / split / "good")
        (root / split / "broken").mkdir()
        (root / split / "broken" / "x.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(DatasetUnavailableError, match="'broken'"):
        build_data(_config(root, tmp_path))


def test_empty_split_is_an_error(tmp_path):
    root = tmp_path / "data"
    _write_cases(root / "train" / "a")
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "a" / "notes.txt").write_text("no image here")
    with pytest.raises(DatasetUnavailableError, match="test split has no usable image"):
        build_data(_config(root, tmp_path))

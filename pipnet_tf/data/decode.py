"""Up-front image validation: which files TensorFlow can decode as they are, which need a
one-off conversion, and which are unusable.

`tf.io.decode_image` (used in the graph by `pipeline.decode_image`) reads baseline and
progressive RGB/greyscale JPEG and every PNG flavour (palette, grey+alpha, RGBA, 16-bit)
correctly, by content rather than extension. It ignores EXIF orientation, decodes CMYK
JPEGs to wrong colours, and reads only JPEG, PNG, GIF and BMP. So `prepare_images` opens
each file's header with PIL once (fast: no pixel decoding for the common case) and:

- keeps a JPEG/PNG in RGB, L, P, RGBA, LA or 16-bit mode as it is, when its last bytes
  show a complete file (JPEG EOI marker, PNG IEND chunk);
- fully decodes anything else with PIL (suspicious ends, other formats, CMYK, EXIF
  orientation other than 1, more than `max_pixels` pixels) and, when that succeeds,
  writes an 8-bit RGB PNG (orientation applied, downscaled under `max_pixels`) into
  `cache_dir`, keyed by path, size and mtime, so it is converted once;
- skips files PIL cannot decode (corrupt, truncated, not an image), logging ONE warning
  that counts and names them.

Sizes returned are the oriented, full-resolution (width, height) of every usable file,
so annotations in original pixels (CUB boxes, part locations) can be normalised.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import threading
import warnings
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from pipnet_tf.io import atomic_output

# Above this the file is pre-downscaled (PIL's decompression-bomb warning starts at ~89M).
DEFAULT_MAX_PIXELS = 40_000_000
_NATIVE_MODES = {"JPEG": {"RGB", "L"},
                 "PNG": {"RGB", "RGBA", "L", "LA", "P", "I;16", "I;16B", "I", "1"}}
_TAILS = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xaeB`\x82",)}
_EXIF_ORIENTATION = 0x0112
_NAMES_IN_WARNING = 20
_BOMB_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class PreparedImages:
    """Result of `prepare_images`, aligned with the input paths.

    Attributes:
        keep: bool (N,) usable files.
        paths: N paths to decode in the graph (a converted cache file where needed; the
            original path for skipped files, which must not be used).
        sizes: int64 (N, 2) oriented original (width, height); 0 for skipped files.
        skipped: {path: reason} for the unusable files.
        converted: number of files converted into the cache.
    """

    keep: np.ndarray
    paths: list[str]
    sizes: np.ndarray
    skipped: dict[str, str]
    converted: int


def _tail_ok(path: str, fmt: str) -> bool:
    tails = _TAILS.get(fmt)
    if tails is None:
        return False
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - 16, 0))
        end = f.read().rstrip(b"\x00\r\n ")
    return any(end.endswith(t) for t in tails)


def _inspect(path: str, max_pixels: int) -> tuple[str, tuple[int, int], str]:
    """('native' | 'convert' | 'skip', oriented (w, h) or (0, 0), reason), header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt, mode, (w, h) = img.format, img.mode, img.size
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if fmt == "JPEG" else 1
    except Image.DecompressionBombError:
        return "convert", (0, 0), "huge"
    except (OSError, SyntaxError, ValueError) as e:  # PIL's "cannot identify image file"
        return "skip", (0, 0), f"not a readable image ({type(e).__name__}: {e})"
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if w < 1 or h < 1:
        return "skip", (0, 0), "empty image"
    if (mode not in _NATIVE_MODES.get(fmt, ()) or orientation not in (1, None)
            or w * h > max_pixels or not _tail_ok(path, fmt)):
        return "convert", (w, h), f"{fmt} {mode} orientation={orientation}"
    return "native", (w, h), ""


def _cache_name(path: str, cache_dir: pathlib.Path, max_pixels: int) -> pathlib.Path:
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{max_pixels}"
    return cache_dir / (hashlib.sha1(key.encode("utf-8")).hexdigest() + ".png")


def _open_full(path: str, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Fully decoded, EXIF-transposed image and its oriented full-resolution size."""
    with Image.open(path) as img:
        w, h = img.size
        if img.format == "JPEG" and w * h > max_pixels:  # decode at reduced scale: fast
            scale = (max_pixels / (w * h)) ** 0.5
            img.draft(img.mode, (int(w * scale) + 1, int(h * scale) + 1))
        img.load()
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        full = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        return ImageOps.exif_transpose(img), full


def _convert(path: str, size: tuple[int, int], cache_dir: pathlib.Path, max_pixels: int
             ) -> tuple[str, tuple[int, int], str]:
    """Full PIL decode -> RGB PNG in the cache: (cache path or '', oriented (w, h), error)."""
    target = _cache_name(path, cache_dir, max_pixels)
    if target.is_file() and size != (0, 0):
        return str(target), size, ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if size == (0, 0):  # over PIL's bomb limit: lift it for this one file
                with _BOMB_LOCK:
                    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                    try:
                        img, size = _open_full(path, max_pixels)
                    finally:
                        Image.MAX_IMAGE_PIXELS = saved
            else:
                img, size = _open_full(path, max_pixels)
        rgb = _to_rgb(img)
        if rgb.width * rgb.height > max_pixels:
            scale = (max_pixels / (rgb.width * rgb.height)) ** 0.5
            rgb = rgb.resize((max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale))),
                             Image.Resampling.BILINEAR, reducing_gap=3.0)
        with atomic_output(target) as tmp:
            rgb.save(tmp, "PNG", compress_level=1)
        return str(target), size, ""
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unusable file"
        return "", (0, 0), f"cannot be decoded ({type(e).__name__}: {e})"


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; 16/32-bit greyscale is rescaled (PIL's convert would clip it)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr * 255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def _check(path: str, cache_dir: pathlib.Path, max_pixels: int
           ) -> tuple[str, tuple[int, int], str]:
    """(path to decode or '' if unusable, oriented (w, h), reason)."""
    if not os.path.isfile(path):
        return "", (0, 0), "missing file"
    status, size, reason = _inspect(path, max_pixels)
    if status == "native":
        return path, size, ""
    if status == "skip":
        return "", size, reason
    return _convert(path, size, cache_dir, max_pixels)


def prepare_images(paths: Sequence[str], cache_dir: str | os.PathLike,
                   max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "images",
                   workers: int = 8) -> PreparedImages:
    """Validates `paths` once (see the module docstring); logs one warning for skips.

    Args:
        paths: image files.
        cache_dir: where converted files go (created when needed).
        max_pixels: larger images are pre-downscaled to at most this many pixels.
        what: name of the set, for the warning.
        workers: threads (the work is mostly file I/O and PIL, which releases the GIL).
    """
    paths = [str(p) for p in paths]
    cache = pathlib.Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda p: _check(p, cache, max_pixels), paths))
    keep = np.array([bool(r[0]) for r in results], bool).reshape(len(paths))
    out_paths = [r[0] or p for r, p in zip(results, paths)]
    sizes = np.array([r[1] if r[0] else (0, 0) for r in results], np.int64).reshape(-1, 2)
    skipped = {p: r[2] for p, r in zip(paths, results) if not r[0]}
    converted = sum(1 for r, p in zip(results, paths) if r[0] and r[0] != p)
    if skipped:
        names = [f"{p} ({why})" for p, why in list(skipped.items())[:_NAMES_IN_WARNING]]
        more = len(skipped) - len(names)
        logging.warning("Skipping %d of %d %s that cannot be used: %s%s", len(skipped),
                        len(paths), what, "; ".join(names),
                        f"; and {more} more" if more > 0 else "")
    if converted:
        logging.info("Converted %d of %d %s to RGB PNG in %s (CMYK, EXIF-rotated, huge or "
                     "non-JPEG/PNG files)", converted, len(paths), what, cache)
    return PreparedImages(keep, out_paths, sizes, skipped, converted)

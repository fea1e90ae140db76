"""Small PIL drawing helpers shared by the global and local explanation pictures."""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)
BOX_COLOUR = (255, 215, 0)
BOX_OUTLINE = (0, 0, 0)


@functools.lru_cache(maxsize=16)
def font(size: int = 14, bold: bool = False) -> ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at `size` px; PIL's default font otherwise."""
    try:
        from matplotlib import font_manager

        path = font_manager.findfont(
            font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"),
            fallback_to_default=True)
        return ImageFont.truetype(path, size)
    except Exception:  # noqa: BLE001 - any font problem falls back to the built-in font
        return ImageFont.load_default(size=size)


def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 3) 0..255 array → RGB image."""
    return Image.fromarray(np.clip(np.round(np.asarray(image, np.float32)), 0, 255).astype(np.uint8))


def resize(image: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Resize for display: nearest neighbour when enlarging (keeps pixels honest), Lanczos
    when shrinking."""
    size = (size, size) if isinstance(size, int) else size
    enlarge = size[0] >= image.width and size[1] >= image.height
    return image.resize(size, Image.NEAREST if enlarge else Image.LANCZOS)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """Patch (h_min, h_max, w_min, w_max) of an (S, S, 3) image."""
    h_min, h_max, w_min, w_max = (int(v) for v in box)
    return to_pil(np.asarray(image)[h_min:h_max, w_min:w_max])


def greyed(image: Image.Image, fade: float = 0.55) -> Image.Image:
    """`image` in grey, faded towards white by `fade` (0: plain grey, 1: white); used for
    disabled prototypes."""
    grey = image.convert("L").convert("RGB")
    return Image.blend(grey, Image.new("RGB", grey.size, BACKGROUND), fade)


def with_box(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> Image.Image:
    """The image enlarged to `size` px with the patch outlined (yellow on black)."""
    pil = resize(to_pil(image), size)
    scale = size / np.asarray(image).shape[0]
    h_min, h_max, w_min, w_max = (v * scale for v in box)
    draw = ImageDraw.Draw(pil)
    rect = [w_min, h_min, w_max - 1, h_max - 1]
    draw.rectangle(rect, outline=BOX_OUTLINE, width=4)
    draw.rectangle(rect, outline=BOX_COLOUR, width=2)
    return pil


def text_width(text: str, fnt) -> int:
    return int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=fnt))


def canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (int(width), int(height)), BACKGROUND)
    return image, ImageDraw.Draw(image)


def ellipsize(text: str, fnt, width: int) -> str:
    """`text` shortened with "…" to fit `width` px."""
    if text_width(text, fnt) <= width:
        return text
    while text and text_width(text + "…", fnt) > width:
        text = text[:-1]
    return text + "…"

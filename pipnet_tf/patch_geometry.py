"""Where a latent cell lies in the image: the pixel box of every cell of a backbone's grid.

One implementation, used by evaluation, purity, the report, the local explanations and
every export signature. A backbone declares its `PatchRule`; the rule and an input size
give a `PatchGeometry` with each cell's box.

The reference rule (SPEC §4, `get_img_coordinates`): a 32-px patch at 224 px input, scaled
to `round(32·S/224)` at other sizes S, cells `skip = round((S − patch)/(W − 1))` pixels
apart for a W-cell axis, the last cell pushed against the image's far edge. The 26-cell
grid of `convnext_tiny_26` has the reference's edge handling: boxes shifted by half a skip
(4 px at 224) except the last. (The reference tests `softmaxes.shape[1] == 26`, which in
its NCHW layout is D, so its branch never fires for D = 768; we apply it to 26x26 grids
as SPEC §4 intends.)

Example:
    >>> g = REFERENCE_RULE.geometry(224, (26, 26))
    >>> g.patch_size, g.skip, g.box(0, 25)
    (32, 8, (0, 32, 192, 224))
"""
from __future__ import annotations

import dataclasses

import numpy as np

Box = tuple[int, int, int, int]  # h_min, h_max, w_min, w_max in model-input pixels, max excluded


@dataclasses.dataclass(frozen=True)
class PatchRule:
    """How a backbone's latent cells map to image patches.

    Attributes:
        patch_size: patch side in pixels at `reference_size` input (scaled with the input).
        reference_size: the input size at which `patch_size` holds.
        edge_offset_cells: an axis with this many cells gets the half-skip edge offset
            (None: never).
    """

    patch_size: int = 32
    reference_size: int = 224
    edge_offset_cells: int | None = 26

    def __post_init__(self):
        if self.patch_size < 1 or self.reference_size < 1:
            raise ValueError(f"patch_size and reference_size must be positive, received "
                             f"{self.patch_size}, {self.reference_size}")

    def geometry(self, image_size: int, grid: tuple[int, int]) -> PatchGeometry:
        """The geometry of a square `image_size` input with a `grid` = (H, W) latent grid."""
        image_size, grid = int(image_size), (int(grid[0]), int(grid[1]))
        if image_size < 1 or min(grid) < 1:
            raise ValueError(f"image_size and grid must be positive, received "
                             f"image_size={image_size}, grid={grid}")
        patch = round(self.patch_size * image_size / self.reference_size)
        patch = max(1, min(patch, image_size))
        return PatchGeometry(image_size, grid, patch, self.edge_offset_cells)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


REFERENCE_RULE = PatchRule()  # SPEC §4; ConvNeXt and ResNet (purity figures depend on it)


@dataclasses.dataclass(frozen=True)
class StridePatchRule:
    """Cells a fixed `stride` apart, as a CNN's receptive fields are: cell i is centred at
    `stride·i + offset` pixels (continuous coordinates, pixel p covers [p, p+1)); its box is
    the reference's patch size (32 px at 224, scaled) centred there and shifted inside the
    image. For backbones whose grid does not span the image edge to edge (tiny_cnn), so
    the box sits where the cell actually looks rather than where the reference's
    edge-to-edge spacing would put it.
    """

    stride: int
    offset: float
    patch_size: int = 32
    reference_size: int = 224

    def geometry(self, image_size: int, grid: tuple[int, int]) -> PatchGeometry:
        base = PatchRule(self.patch_size, self.reference_size, None).geometry(image_size, grid)
        return dataclasses.replace(base, stride=int(self.stride), offset=float(self.offset))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PatchGeometry:
    """Cell → pixel box for one input size and latent grid (see the module docstring).

    Attributes:
        image_size: S of the square model input.
        grid: (H, W) latent cells.
        patch_size: box side in pixels.
        edge_offset_cells: axes with this many cells get the half-skip edge offset.
    """

    image_size: int
    grid: tuple[int, int]
    patch_size: int
    edge_offset_cells: int | None = None
    stride: int | None = None  # set: cells centred at stride·i + offset (StridePatchRule)
    offset: float = 0.0

    def with_patch_size(self, patch_size: int) -> PatchGeometry:
        """The same cells judged with boxes of `patch_size` pixels (purity uses the
        reference's 32/224 of the input side whatever a backbone declares)."""
        return dataclasses.replace(self, patch_size=max(1, min(int(patch_size),
                                                               self.image_size)))

    def skip(self, axis: int = 1) -> int:
        """Pixels between neighbouring cells along `axis` (0: rows, 1: columns)."""
        if self.stride is not None:
            return int(self.stride)
        cells = self.grid[axis]
        if cells <= 1:
            return 0
        return int(round((self.image_size - self.patch_size) / (cells - 1)))

    def bounds(self, axis: int) -> np.ndarray:
        """int64 (cells, 2) [min, max) pixel bounds of every cell index along `axis`."""
        cells, size, patch, skip = self.grid[axis], self.image_size, self.patch_size, self.skip(axis)
        out = np.zeros((cells, 2), np.int64)
        if self.stride is not None:
            centres = self.stride * np.arange(cells) + self.offset
            lo = np.clip(np.floor(centres - patch / 2 + 0.5), 0, size - patch)
            out[:, 0], out[:, 1] = lo, lo + patch
            return out
        offset = skip // 2 if cells == self.edge_offset_cells else None
        for i in range(cells):
            if offset is not None:
                lo = max(0, (i - 1) * skip + offset)
                if i == cells - 1:
                    lo -= offset
                hi = lo + patch
            else:
                lo, hi = i * skip, min(size, i * skip + patch)
            if i == cells - 1:
                hi = size
            if hi >= size:
                lo = size - patch
            out[i] = (max(lo, 0), min(hi, size))
        return out

    def box(self, h_index: int, w_index: int) -> Box:
        """(h_min, h_max, w_min, w_max) of latent cell (h_index, w_index), max excluded."""
        rows, cols = self.bounds(0)[int(h_index)], self.bounds(1)[int(w_index)]
        return int(rows[0]), int(rows[1]), int(cols[0]), int(cols[1])

    def location_box(self, flat_location: int) -> Box:
        """`box` of a row-major flat latent index."""
        h_index, w_index = divmod(int(flat_location), self.grid[1])
        return self.box(h_index, w_index)

    def to_dict(self) -> dict:
        """What evaluation.json and the export metadata state about the geometry."""
        out = {"image_size": self.image_size, "latent_grid": list(self.grid),
               "patch_size": self.patch_size, "skip": [self.skip(0), self.skip(1)],
               "edge_offset_cells": self.edge_offset_cells}
        if self.stride is not None:
            out.update(cell_centre=f"{self.stride}·i + {self.offset:g} px")
        return out

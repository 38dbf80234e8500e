"""Native-resolution image preprocessing.

NaViL's encoder takes each image at (close to) its own resolution and aspect ratio. The only constraints are
that both sides are multiples of `patch_size * downsample` (so patches tile the image and the 2x2 pixel
shuffle tiles the patch grid) and that the patch count stays within a budget, so tiny images still get a few
tokens and huge ones don't blow up the sequence.

An image becomes one or more *views* (tensors the encoder sees), grouped into *segments* (each one
`<img_start> ... <img_end>` block of the text, see `data.collate`):
- one view in one segment: the default;
- NaViL multi-scale packing (`scales` > 1): the image at `tau^i` of its size (tau = sqrt(2)/2, so each scale
  has half the area of the next), coarse to fine, one segment per scale; each scale's `<img_end>` is the
  end-of-scale token, which a model trained on single-scale images already knows as "this image's tokens
  end here", where a new token would start untrained;
- InternVL dynamic tiling (`max_tiles` > 1, fixed-input ViT): the image resized to the grid of
  `image_size` tiles whose aspect ratio is closest to its own, cut into tiles row-major, plus a thumbnail
  of the whole image when there is more than one tile, all in one segment (as InternVL puts all tiles
  between one `<img>` and `</img>`).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from ..config import ConnectorConfig, VisionConfig
from ..errors import ConfigError, ImageError


def fit_size(
    width: int,
    height: int,
    patch_size: int = 16,
    factor: int = 32,
    min_patches: int = 16,
    max_patches: int = 4096,
) -> tuple[int, int]:
    """The (width, height) to resize an image to: both sides multiples of `factor`, the patch count
    `(w / patch_size) * (h / patch_size)` within [min_patches, max_patches], aspect ratio kept as closely
    as the grid allows. Sizes already within budget are only rounded to the grid."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if factor % patch_size:
        raise ValueError(f"factor {factor} must be a multiple of patch_size {patch_size}")
    per_cell = (factor // patch_size) ** 2  # patches in one factor x factor cell
    min_cells = max(1, math.ceil(min_patches / per_cell))
    max_cells = max_patches // per_cell
    if max_cells < min_cells:
        raise ValueError(
            f"no {factor}-pixel grid has between {min_patches} and {max_patches} patches of {patch_size}px"
        )
    # Work in cells: a x b cells of factor x factor pixels. Target area (in cells) is the image's own,
    # clamped to the budget; the sides then follow from the aspect ratio.
    ratio = width / height
    area = min(max(width * height / factor**2, min_cells), max_cells)
    a = round(math.sqrt(area * ratio))
    b = round(math.sqrt(area / ratio))
    # A very elongated image gets one cell across its short side; its long side then follows the aspect
    # ratio (scaling up uniformly) rather than the area, so thin text strips keep their glyph shapes.
    if b < 1:
        a, b = min(max_cells, max(1, round(ratio))), 1
    elif a < 1:
        a, b = 1, min(max_cells, max(1, round(1 / ratio)))

    def ratio_error(a: int, b: int) -> float:
        return abs(math.log(a / b / ratio))

    # Rounding can leave the budget: step the side whose change distorts the aspect ratio least.
    while a * b > max_cells:
        if b == 1 or (a > 1 and ratio_error(a - 1, b) <= ratio_error(a, b - 1)):
            a -= 1
        else:
            b -= 1
    while a * b < min_cells:
        if ratio_error(a + 1, b) <= ratio_error(a, b + 1):
            a += 1
        else:
            b += 1
    return a * factor, b * factor


TAU = math.sqrt(2) / 2  # NaViL's scale step: each coarser scale has half the area
MIN_SCALE_PATCHES = 16  # multi-scale stops before a scale with fewer patches (2x2 tokens at the 2x2 merge)


def closest_grid(width: int, height: int, tile: int, max_tiles: int, min_tiles: int = 1) -> tuple[int, int]:
    """(cols, rows) of InternVL's dynamic tiling (`dynamic_preprocess`): among grids with min_tiles <=
    cols * rows <= max_tiles, the one whose aspect ratio cols / rows is closest to width / height. Grids
    are tried in order of tile count; on an exact tie a later (larger) grid wins when the image's area is
    more than half of that grid's pixel area, so a large image gets more tiles than a small one of the same
    shape (an 800 x 800 image gets 2 x 2 tiles of 448, a 448 x 448 one a single tile)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles} and {max_tiles}")
    aspect = width / height
    # Built as InternVL builds it (a set sorted by tile count) so that ties among grids of equal tile count
    # resolve in the same order.
    grids = sorted({(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1)
                    for j in range(1, n + 1) if min_tiles <= i * j <= max_tiles}, key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def tile_image(img: Image.Image, tile: int, max_tiles: int) -> list[Image.Image]:
    """InternVL's dynamic tiling: the tiles of `closest_grid`, row-major, then a tile-sized thumbnail of the
    whole image when there is more than one tile."""
    cols, rows = closest_grid(*img.size, tile, max_tiles)
    resized = img.resize((tile * cols, tile * rows), Image.BICUBIC)
    tiles = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(rows) for c in range(cols)]
    if len(tiles) > 1:
        tiles.append(img.resize((tile, tile), Image.BICUBIC))
    return tiles


def load_image(path: Union[str, Path, bytes]) -> Image.Image:
    """Open and fully decode an image as RGB. Decoding up front (not lazily) is what catches truncated
    files here, with the file named, rather than deep inside a training step. EXIF rotation is applied and
    transparent areas are composited on white (dropping alpha would show whatever colour the transparent
    pixels happen to store, often black). `bytes` are an image file held in memory (a server's upload)."""
    if isinstance(path, bytes):
        source, path = io.BytesIO(path), "(uploaded bytes)"
    else:
        source = path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(source) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None


def verify_image(path: Union[str, Path, bytes]) -> None:
    """Check that `path` is an image file with an intact structure (header, chunk checksums) without
    decoding its pixels: the cheap check a dataset reader runs before the collator decodes it once.
    `bytes` are an image file's contents (as a shard stores them)."""
    source, path = (io.BytesIO(path), "(stored bytes)") if isinstance(path, bytes) else (path, path)
    try:
        with Image.open(source) as img:
            img.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None


def to_tensor(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize to `size` = (width, height) with bicubic filtering and normalise to [-1, 1]
    (mean 0.5, std 0.5): a float32 tensor [3, height, width]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return x.float().div_(127.5).sub_(1.0)


class ImageProcessor:
    """Path or PIL image -> normalised tensor at its native-resolution size on the `factor` grid.
    `fixed_size` (square side) replaces native resolution for the fixed-input ViT baseline. `downsample` is
    the default compression rate images are tokenised at (default: factor / patch_size); `factor` is the
    cell of the coarsest rate the model has, so an image can be tokenised at any of them; `region_size`
    (patches) is the model's `connector.region_size`, which the token layout follows."""

    def __init__(
        self,
        patch_size: int = 16,
        factor: int = 32,
        min_patches: int = 16,
        max_patches: int = 4096,
        fixed_size: Optional[int] = None,
        downsample: Optional[int] = None,
        scales: int = 1,
        max_tiles: int = 1,
        region_size: int = 0,
    ):
        if fixed_size is not None and fixed_size % factor:
            raise ValueError(f"fixed_size {fixed_size} must be a multiple of {factor}")
        if scales < 1 or max_tiles < 1:
            raise ConfigError(f"vision.scales and vision.max_tiles must be at least 1, got {scales} and {max_tiles}")
        if scales > 1 and fixed_size is not None:
            raise ConfigError("vision.scales > 1 (multi-scale packing) needs the native encoder; a fixed-input "
                             "ViT tiles large images instead (vision.max_tiles)")
        if max_tiles > 1 and fixed_size is None:
            raise ConfigError("vision.max_tiles > 1 (dynamic tiling) is for the fixed-input ViT; the native "
                             "encoder takes each image whole at its own resolution")
        self.patch_size = patch_size
        self.factor = factor
        self.downsample = downsample or factor // patch_size
        self.region_size = region_size
        self.min_patches = min_patches
        self.max_patches = max_patches
        self.fixed_size = fixed_size
        self.scales = scales
        self.max_tiles = max_tiles

    @classmethod
    def from_config(cls, vision: VisionConfig, connector: ConnectorConfig) -> "ImageProcessor":
        return cls(
            patch_size=vision.patch_size,
            factor=vision.patch_size * max(connector.downsample, connector.extra_downsample),
            downsample=connector.downsample,
            region_size=connector.region_size,
            min_patches=vision.min_patches,
            max_patches=vision.max_patches,
            fixed_size=vision.image_size if vision.arch == "vit" else None,
            scales=vision.scales,
            max_tiles=vision.max_tiles,
        )

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        if self.fixed_size is not None:
            return self.fixed_size, self.fixed_size
        return fit_size(width, height, self.patch_size, self.factor, self.min_patches, self.max_patches)

    def scale_sizes(self, width: int, height: int) -> list[tuple[int, int]]:
        """The (width, height) of each multi-scale view, coarse to fine: the finest is `size_for`'s, each
        coarser one tau times its sides (rounded to the grid) while it keeps MIN_SCALE_PATCHES patches. The
        coarser views may go below `min_patches`, the budget floor of the finest view: a model trained with
        min_patches = max_patches (the quickstart's) would otherwise get no second scale at all."""
        sizes = [self.size_for(width, height)]
        w, h = sizes[0]
        for i in range(1, self.scales):
            sw, sh = w * TAU ** i, h * TAU ** i
            if sw * sh / self.patch_size ** 2 < MIN_SCALE_PATCHES:
                break
            size = fit_size(round(sw), round(sh), self.patch_size, self.factor, MIN_SCALE_PATCHES, self.max_patches)
            if size != sizes[-1]:  # rounding to the grid can merge neighbouring scales of a small image
                sizes.append(size)
        return sizes[::-1]

    def segments(self, image: Union[str, Path, Image.Image, torch.Tensor]) -> list[list[torch.Tensor]]:
        """The image's views grouped into segments (see the module docstring): [[one tensor]] by default."""
        if isinstance(image, torch.Tensor):  # a view this processor already made (a prompt laid out again)
            return [[image]]
        img = image if isinstance(image, Image.Image) else load_image(image)
        if self.max_tiles > 1:
            return [[to_tensor(t, (self.fixed_size,) * 2) for t in tile_image(img, self.fixed_size, self.max_tiles)]]
        if self.scales > 1:
            return [[to_tensor(img, size)] for size in self.scale_sizes(*img.size)]
        return [[to_tensor(img, self.size_for(*img.size))]]

    def __call__(self, image: Union[str, Path, Image.Image, torch.Tensor]) -> torch.Tensor:
        """The image as one tensor (its single view; `segments` for multi-scale or tiled images). A tensor
        is an image this processor already made (a prompt laid out again at other rates)."""
        if isinstance(image, torch.Tensor):
            return image
        img = image if isinstance(image, Image.Image) else load_image(image)
        return to_tensor(img, self.size_for(*img.size))

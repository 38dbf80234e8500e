"""The processor of a NativeVLM exported by `nativevlm export hf` (transformers remote code).

Images keep (close to) their own size and aspect ratio: each is resized, bicubic, so both sides are multiples
of `factor` (the cell of the coarsest compression rate) with the patch count within [min_patches,
max_patches], normalised to [-1, 1] and cut into patches. Text is ChatML; each `<image>` marker becomes
<img_start>, then per row of image tokens that row's <img> placeholders and an <img_eol>, then <img_end>.
Every chat header (`<|im_start|>role\\n`), message piece and footer is tokenised on its own, as nativevlm
tokenises in training, so a question gives the input ids the model was trained on.
"""
import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import BaseImageProcessor, BatchFeature, ProcessorMixin

IMAGE_MARKER = "<image>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# Messages hold a string or a list of {"type": "image"} / {"type": "text", "text": ...} items; each image
# becomes one marker line before the text that follows it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def fit_size(width, height, patch_size=16, factor=32, min_patches=16, max_patches=4096):
    """The (width, height) to resize to: sides multiples of `factor`, (w/p)(h/p) patches within
    [min_patches, max_patches], the aspect ratio kept as closely as the grid allows."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    per_cell = (factor // patch_size) ** 2
    min_cells = max(1, math.ceil(min_patches / per_cell))
    max_cells = max_patches // per_cell
    ratio = width / height
    area = min(max(width * height / factor**2, min_cells), max_cells)
    a = round(math.sqrt(area * ratio))
    b = round(math.sqrt(area / ratio))
    if b < 1:
        a, b = min(max_cells, max(1, round(ratio))), 1
    elif a < 1:
        a, b = 1, min(max_cells, max(1, round(1 / ratio)))

    def ratio_error(a, b):
        return abs(math.log(a / b / ratio))

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


def load_image(path):
    """An image file as RGB: EXIF rotation applied, transparent areas composited on white."""
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")


def flatten(images):
    """One image, a list of images, or a list per conversation (as `apply_chat_template` passes them) -> a
    flat list in order."""
    if not isinstance(images, (list, tuple)):
        return [images]
    return [image for item in images for image in flatten(item)]


class NativeVLMImageProcessor(BaseImageProcessor):
    """Images (PIL images or file paths) -> `pixel_values` [patches, 3 * p * p] (every image's patches,
    row-major, each flattened as (channel, row, column)), `image_grid_hw` [images, 2] (patch rows and
    columns) and `image_downsample` [images] (the compression rate each image's tokens are laid out at)."""

    model_input_names = ["pixel_values", "image_grid_hw", "image_downsample"]

    def __init__(self, patch_size=16, factor=32, downsample=2, min_patches=16, max_patches=4096, fixed_size=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.factor = factor
        self.downsample = downsample
        self.min_patches = min_patches
        self.max_patches = max_patches
        self.fixed_size = fixed_size

    def size_for(self, width, height):
        if self.fixed_size is not None:
            return self.fixed_size, self.fixed_size
        return fit_size(width, height, self.patch_size, self.factor, self.min_patches, self.max_patches)

    def to_tensor(self, image):
        """One image -> [3, H, W] in [-1, 1] at its size on the grid."""
        img = image if isinstance(image, Image.Image) else load_image(Path(image))
        if img.mode != "RGB":
            img = img.convert("RGB")
        size = self.size_for(*img.size)
        if img.size != tuple(size):
            img = img.resize(tuple(size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x.float().div_(127.5).sub_(1.0)

    def preprocess(self, images, downsample=None, return_tensors="pt", **kwargs):
        """`downsample`: one compression rate for every image or one per image (default: the model's)."""
        images = flatten(images)
        rates = downsample if isinstance(downsample, (list, tuple)) else [downsample or self.downsample] * len(images)
        if len(rates) != len(images):
            raise ValueError(f"{len(rates)} compression rates for {len(images)} images")
        p = self.patch_size
        patches, grids = [], []
        for image in images:
            x = self.to_tensor(image)
            c, h, w = x.shape
            patches.append(x.view(c, h // p, p, w // p, p).permute(1, 3, 0, 2, 4).reshape(-1, c * p * p))
            grids.append([h // p, w // p])
        data = {"pixel_values": torch.cat(patches) if patches else torch.zeros(0, 3 * p * p),
                "image_grid_hw": torch.tensor(grids, dtype=torch.long).reshape(-1, 2),
                "image_downsample": torch.tensor(rates, dtype=torch.long)}
        return BatchFeature(data=data, tensor_type=return_tensors)


class NativeVLMProcessor(ProcessorMixin):
    """`processor(text=..., images=...)`: `text` (a string or a list, usually from `apply_chat_template`)
    holds one `<image>` marker per image, images in marker order across the texts. Rows are left-padded, so
    a batch generates as each row alone would."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_token="<img>",
                 image_start_token="<img_start>", image_end_token="<img_end>", image_eol_token="<img_eol>",
                 **kwargs):
        self.image_token = image_token
        self.image_start_token = image_start_token
        self.image_end_token = image_end_token
        self.image_eol_token = image_eol_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    def image_block(self, rows, cols):
        ids = self.tokenizer.convert_tokens_to_ids
        row = [ids(self.image_token)] * cols + [ids(self.image_eol_token)]
        return [ids(self.image_start_token), *row * rows, ids(self.image_end_token)]

    def encode_text(self, text, grids):
        """Token ids of one prompt; `grids` yields (rows, cols) of image tokens per marker."""
        ids = []
        # A chat header, an <|im_end|> and each image marker end a piece: the text between is one encode call.
        for piece in re.split(f"({re.escape(IM_START)}[^\\n]*\\n|{re.escape(IM_END)}|{re.escape(IMAGE_MARKER)})",
                              text):
            if piece == IMAGE_MARKER:
                rows, cols = next(grids, (None, None))
                if rows is None:
                    raise ValueError(f"more {IMAGE_MARKER} markers than images")
                ids += self.image_block(rows, cols)
            elif piece.startswith(IM_START):
                ids += [self.tokenizer.convert_tokens_to_ids(IM_START)]
                ids += self.tokenizer.encode(piece[len(IM_START):], add_special_tokens=False)
            elif piece:
                ids += self.tokenizer.encode(piece, add_special_tokens=False)
        return ids

    def __call__(self, images=None, text=None, downsample=None, return_tensors="pt", **kwargs):
        texts = [text] if isinstance(text, str) else list(text or [])
        data = {}
        grids = iter(())
        if images is not None:
            data = dict(self.image_processor(images, downsample=downsample, return_tensors=None))
            cell = torch.as_tensor(data["image_downsample"])[:, None]
            grids = iter((torch.as_tensor(data["image_grid_hw"]) // cell).tolist())
        rows = [self.encode_text(t, grids) for t in texts]
        if next(grids, None) is not None:
            raise ValueError(f"more images than {IMAGE_MARKER} markers")
        width = max((len(r) for r in rows), default=0)
        pad = self.tokenizer.pad_token_id
        data["input_ids"] = [[pad] * (width - len(r)) + r for r in rows]
        data["attention_mask"] = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", *self.image_processor.model_input_names]

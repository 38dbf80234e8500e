"""Images as several views: InternVL's dynamic tiling (grids hand-computed from its rule) and NaViL's
multi-scale packing (sizes hand-computed from tau = sqrt(2)/2), their token layouts, and a model that takes
the resulting batch (one feature per <img> token)."""
import numpy as np
import pytest
import torch
from PIL import Image

from nativevlm import LanguageConfig, LanguageModel, NativeVLM, VisionConfig
from nativevlm.config import ConfigError, ConnectorConfig
from nativevlm.data.collate import Collator, encode_sample
from nativevlm.data.image import ImageProcessor, closest_grid, tile_image, to_tensor
from nativevlm.data.sample import Sample
from nativevlm.data.tokenizer import Tokenizer


@pytest.mark.parametrize("size, max_tiles, grid", [
    ((448, 448), 12, (1, 1)),    # aspect 1: 2x2 ties, but 448^2 is not more than half of 896^2
    ((800, 800), 12, (2, 2)),    # 640000 > 0.5 * 448^2 * 4, not > 0.5 * 448^2 * 9
    ((1000, 1000), 12, (3, 3)),  # 1e6 > 0.5 * 448^2 * 9 = 903168
    ((896, 448), 12, (2, 1)),    # 4x2 ties at aspect 2 but the image is too small for it
    ((1920, 1080), 12, (4, 2)),  # 2x1 and 4x2 are closest (|1.78 - 2|), the image is large: 4x2
    ((100, 400), 12, (1, 4)),    # tall: one column
    ((500, 300), 6, (3, 2)),     # aspect 1.67: 3x2 (1.5) beats 2x1 (2.0)
    ((300, 200), 4, (1, 1)),     # 3x2 not allowed; 1x1 and 2x1 tie at |1.5 - 1| = |1.5 - 2|: small image
    ((600, 400), 4, (2, 1)),     # the same tie, 240000 > 0.5 * 448^2 * 2: the larger grid
    ((2000, 300), 6, (6, 1)),    # very wide: as many columns as allowed
])
def test_closest_grid_follows_internvl(size, max_tiles, grid):
    assert closest_grid(*size, tile=448, max_tiles=max_tiles) == grid


def test_tiles_are_crops_of_the_resized_image_plus_a_thumbnail():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 120, 3), dtype=np.uint8))  # 120 x 40: aspect 3
    tiles = tile_image(img, 32, max_tiles=4)
    resized = np.asarray(img.resize((96, 32), Image.BICUBIC))
    assert len(tiles) == 3 + 1 and all(t.size == (32, 32) for t in tiles)
    for c in range(3):
        assert np.array_equal(np.asarray(tiles[c]), resized[:, 32 * c:32 * (c + 1)])
    assert np.array_equal(np.asarray(tiles[3]), np.asarray(img.resize((32, 32), Image.BICUBIC)))
    assert len(tile_image(img.resize((32, 32)), 32, max_tiles=4)) == 1  # one tile: no thumbnail


def test_multi_scale_sizes_coarse_to_fine():
    proc = ImageProcessor(patch_size=8, factor=16, min_patches=16, max_patches=4096, scales=4)
    # 128x64 -> x0.707 = 90.5x45.3 (on the 16-px grid: 96x48) -> x0.5 = 64x32 -> x0.354 = 45.3x22.6 (16 patches,
    # kept; 3x1 cells round up to the 4-cell minimum as 3x2: 48x32) -> x0.25 = 32x16 has 8 < 16 patches: stop.
    assert proc.scale_sizes(128, 64) == [(48, 32), (64, 32), (96, 48), (128, 64)]
    more = ImageProcessor(patch_size=8, factor=16, min_patches=16, max_patches=4096, scales=6)
    assert more.scale_sizes(128, 64) == proc.scale_sizes(128, 64)
    # A fixed budget (min_patches = max_patches = 128) holds the finest view only; coarser views go below it.
    fixed = ImageProcessor(patch_size=8, factor=16, min_patches=128, max_patches=128, scales=3)
    assert fixed.scale_sizes(128, 64) == [(64, 32), (96, 48), (128, 64)]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["a red square", "a blue circle"] * 20, vocab_size=300, min_frequency=1)


def image_blocks(ids: list[int], tok: Tokenizer) -> list[list[str]]:
    """Each <img_start> ... <img_end> block as rows of 'x' (an <img> token) strings, '|' ending a row."""
    t = tok.image_token_ids()
    marks = {t["image_token_id"]: "x", t["image_eol_id"]: "|"}
    blocks, current = [], None
    for i in ids:
        if i == t["image_start_id"]:
            current = ""
        elif i == t["image_end_id"]:
            blocks.append(current.split("|")[:-1])
            current = None
        elif current is not None:
            current += marks[i]
    return blocks


def test_tiled_image_is_one_block_of_its_tiles_then_the_thumbnail(tok, tmp_path):
    Image.new("RGB", (64, 32), (200, 10, 10)).save(tmp_path / "wide.png")
    proc = ImageProcessor(patch_size=8, factor=16, fixed_size=32, max_tiles=4)
    sample = Sample("t", [{"role": "user", "content": "<image> what?"}, {"role": "assistant", "content": "a red square"}],
                    [str(tmp_path / "wide.png")])
    enc = encode_sample(sample, tok, proc)
    assert len(enc.pixel_values) == 3 and all(p.shape == (3, 32, 32) for p in enc.pixel_values)  # 2x1 + thumbnail
    assert image_blocks(enc.input_ids, tok) == [["xx"] * 2 * 3]  # three views of 2x2 tokens in one block
    assert enc.image_downsample == [2, 2, 2]


def test_multi_scale_image_is_one_block_per_scale_coarse_to_fine(tok, tmp_path):
    Image.new("RGB", (128, 64), (10, 200, 10)).save(tmp_path / "wide.png")
    proc = ImageProcessor(patch_size=8, factor=16, min_patches=16, max_patches=4096, scales=3)
    sample = Sample("m", [{"role": "user", "content": "<image> what?"}, {"role": "assistant", "content": "a blue circle"}],
                    [str(tmp_path / "wide.png")])
    enc = encode_sample(sample, tok, proc)
    assert [tuple(p.shape[-2:]) for p in enc.pixel_values] == [(32, 64), (48, 96), (64, 128)]
    # Per scale, 2x2 patches per token: 2x4, 3x6, 4x8 tokens; each scale's <img_end> ends it.
    assert image_blocks(enc.input_ids, tok) == [["x" * 4] * 2, ["x" * 6] * 3, ["x" * 8] * 4]
    assert torch.equal(enc.pixel_values[-1], to_tensor(Image.open(tmp_path / "wide.png"), (128, 64)))


@pytest.mark.parametrize("vision", [dict(arch="native", scales=3, min_patches=16),
                                    dict(arch="vit", image_size=32, max_tiles=4, bias=True)])
def test_model_takes_a_batch_of_multi_view_images(tok, tmp_path, vision):
    for i, size in enumerate([(128, 64), (48, 48)]):
        Image.new("RGB", size, (60 * i, 90, 30)).save(tmp_path / f"{i}.png")
    torch.manual_seed(0)
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                      num_kv_heads=1, intermediate_size=48))
    vlm = NativeVLM.from_language_model(
        lm, vision=VisionConfig(patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, **vision),
        connector=ConnectorConfig(), image_token_ids=tok.image_token_ids())
    proc = ImageProcessor.from_config(vlm.config.vision, vlm.config.connector)
    samples = [Sample(str(i), [{"role": "user", "content": "<image> what?"}, {"role": "assistant", "content": "a red square"}],
                      [str(tmp_path / f"{i}.png")]) for i in range(2)]
    batch = Collator(tok, proc, max_length=512)(samples)
    assert len(batch.pixel_values) > 2  # several views per image
    assert torch.isfinite(vlm(batch).loss)  # the model's slot check: one feature per <img> token


def test_views_options_are_checked():
    with pytest.raises(ConfigError, match="needs the native encoder"):
        ImageProcessor(fixed_size=32, factor=16, patch_size=8, scales=2)
    with pytest.raises(ConfigError, match="is for the fixed-input ViT"):
        ImageProcessor(max_tiles=4)
    with pytest.raises(ConfigError, match="at least 1"):
        ImageProcessor(scales=0)


def test_server_refuses_a_model_that_needs_several_views(tok):
    from nativevlm.serve.api import ChatServer, ServeConfig

    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                      num_kv_heads=1, intermediate_size=48))
    vlm = NativeVLM.from_language_model(lm, vision=VisionConfig(hidden_size=16, num_layers=1, num_heads=2,
                                                                intermediate_size=32, scales=2),
                                        image_token_ids=tok.image_token_ids())
    with pytest.raises(ConfigError, match="vision.scales=1 and vision.max_tiles=1"):
        ChatServer(vlm, tok, ServeConfig(model_name="m"))

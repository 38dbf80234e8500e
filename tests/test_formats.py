"""Dataset readers (LLaVA JSON, chat JSONL), skip-and-count / strict behaviour, and image preprocessing."""
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from nativevlm.config import ConnectorConfig, VisionConfig
from nativevlm.data.formats import (
    CORRUPT_IMAGE,
    EMPTY_CONVERSATION,
    MALFORMED_JSON,
    MARKER_MISMATCH,
    MISSING_IMAGE,
    DataError,
    read_samples,
    write_llava,
)
from nativevlm.data.image import ImageError, ImageProcessor, fit_size, load_image, to_tensor


@pytest.fixture
def images(tmp_path):
    """Two good PNGs in tmp/imgs, a truncated one, and a file that isn't an image."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (20, 60), (0, 0, 255)).save(folder / "b.png")
    good = (folder / "a.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.png").write_text("not an image")
    return folder


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_llava_single_multi_and_text_only(tmp_path, images):
    path = write_json(tmp_path / "llava.json", [
        {"id": "one", "image": "imgs/a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "two", "images": ["imgs/a.png", "imgs/b.png"], "meta": {"task": "compare"}, "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "<image> vs <image>: which is taller?"}, {"from": "gpt", "value": "Second."}]},
        {"id": 3, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ])
    samples, report = read_samples(path)
    assert report.n_records == 3 and report.n_samples == 3 and report.n_skipped == 0
    one, two, three = samples
    assert one.images == [str(images / "a.png")]
    assert one.messages == [{"role": "user", "content": "<image>\nWhat colour?"},
                            {"role": "assistant", "content": "Red."}]
    assert two.images == [str(images / "a.png"), str(images / "b.png")]
    assert [m["role"] for m in two.messages] == ["system", "user", "assistant"]
    assert two.meta == {"task": "compare", "source": f"{path}:1"}
    assert three.id == "3" and three.images == [] and three.meta == {"source": f"{path}:2"}


def test_llava_image_without_marker_gets_one_prepended(tmp_path, images):
    path = write_json(tmp_path / "d.json", [{"image": "imgs/a.png", "conversations": [
        {"from": "human", "value": "Describe."}, {"from": "gpt", "value": "A red square."}]}])
    (sample,), _ = read_samples(path)
    assert sample.messages[0]["content"] == "<image>\nDescribe."
    assert sample.id == "d-0"


def test_chat_jsonl_parts_and_image_list(tmp_path, images):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file://imgs/a.png"}},
                                         {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": "A square."}]},
        {"messages": [{"role": "user", "content": "<image><image> Same?"}, {"role": "assistant", "content": "No."}],
         "images": ["a.png", "b.png"], "meta": {"answer": "No"}},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ])
    samples, report = read_samples(path, image_root=images)  # relative paths resolve against image_root
    assert report.n_skipped == 1  # the first record's "imgs/a.png" doesn't exist under image_root
    assert report.skipped == {MISSING_IMAGE: 1}
    second, third = samples
    assert second.images == [str(images / "a.png"), str(images / "b.png")]
    assert second.meta == {"answer": "No", "source": f"{path}:2"}
    assert third.images == []

    samples, _ = read_samples(path)  # default root: the data file's folder
    assert samples[0].messages[0]["content"] == "<image>\nWhat is this?"
    assert samples[0].images == [str(images / "a.png")]


def test_bad_records_are_skipped_and_counted(tmp_path, images):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},
        '{"messages": [oops',
        {"messages": [{"role": "user", "content": "<image> hi"}], "images": ["imgs/missing.png"]},
        {"messages": [{"role": "user", "content": "<image> hi"}], "images": ["imgs/truncated.png"]},
        {"messages": [{"role": "user", "content": "<image> hi"}], "images": ["imgs/text.png"]},
        {"messages": [{"role": "user", "content": "two? <image><image>"}], "images": ["imgs/a.png"]},
        {"messages": []},
    ])
    samples, report = read_samples(path)
    assert len(samples) == 1 and report.n_records == 7
    assert report.skipped == {MALFORMED_JSON: 1, MISSING_IMAGE: 1, CORRUPT_IMAGE: 2, MARKER_MISMATCH: 1,
                              EMPTY_CONVERSATION: 1}
    summary = report.summary()
    assert f"{path} line 2: malformed JSON" in summary
    assert f"{path} line 3: image file" in summary and "missing.png" in summary
    assert f"{path} line 6: 2 <image> markers but 1 images" in summary
    assert "1 more" in summary  # five examples are kept, the sixth is counted


def test_strict_raises_naming_file_and_line(tmp_path, images):
    path = write_json(tmp_path / "s.json", [
        {"conversations": [{"from": "human", "value": "fine"}]},
        {"image": "imgs/truncated.png", "conversations": [{"from": "human", "value": "<image>"}]},
    ])
    with pytest.raises(DataError, match=r"s\.json record 1: cannot read image .*truncated\.png"):
        read_samples(path, strict=True)
    with pytest.raises(DataError, match="not valid JSON"):
        read_samples(write_jsonl(tmp_path / "broken.json", ["[{"]))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_samples(tmp_path / "nope.json")


def test_write_llava_round_trip(tmp_path, images):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "<image><image>?"},
                      {"role": "assistant", "content": "!"}], "images": ["imgs/a.png", "imgs/b.png"],
         "meta": {"kind": "x"}},
        {"messages": [{"role": "user", "content": "<image>?"}], "images": ["imgs/a.png"]},
    ])
    samples, _ = read_samples(path)
    out = tmp_path / "out.json"
    write_llava(samples, out)
    assert json.loads(out.read_text())[1]["image"] == "imgs/a.png"  # relative to the output folder
    again, report = read_samples(out)
    assert report.n_skipped == 0
    for a, b in zip(samples, again):
        assert (a.messages, a.images) == (b.messages, b.images)
        assert {k: v for k, v in a.meta.items() if k != "source"} == {k: v for k, v in b.meta.items() if k != "source"}
    assert again[0].meta["source"] == f"{out}:0"


# -- images -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w,h", [(640, 480), (10, 10), (4000, 3000), (1920, 1080), (33, 1000), (1, 1),
                                 (100000, 7), (7, 100000), (5000, 10), (224, 224), (513, 257)])
def test_fit_size_invariants(w, h):
    W, H = fit_size(w, h)
    patches = (W // 16) * (H // 16)
    assert W % 32 == 0 and H % 32 == 0 and W >= 32 and H >= 32
    assert 16 <= patches <= 4096
    if 1 / 8 <= w / h <= 8:
        assert abs(math.log((W / H) / (w / h))) < 0.1, (W, H)


def test_fit_size_keeps_in_budget_sizes_and_other_grids():
    assert fit_size(640, 480) == (640, 480)
    assert fit_size(64, 64, patch_size=14, factor=28, min_patches=4, max_patches=64) == (56, 56)
    W, H = fit_size(3000, 2000, patch_size=14, factor=28, min_patches=4, max_patches=256)
    assert W % 28 == 0 and H % 28 == 0 and (W // 14) * (H // 14) <= 256
    with pytest.raises(ValueError):
        fit_size(10, 10, min_patches=100, max_patches=50)


def test_load_image_errors_name_the_file(images, tmp_path):
    assert load_image(images / "a.png").mode == "RGB"
    with pytest.raises(ImageError, match="truncated.png"):
        load_image(images / "truncated.png")
    with pytest.raises(ImageError, match="text.png"):
        load_image(images / "text.png")
    with pytest.raises(FileNotFoundError, match="none.png"):
        load_image(images / "none.png")
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_to_tensor_and_processor(images):
    x = to_tensor(Image.new("RGB", (8, 4), (255, 0, 128)), (64, 32))
    assert x.shape == (3, 32, 64) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]), atol=1e-6)
    proc = ImageProcessor.from_config(VisionConfig(), ConnectorConfig())
    assert proc.factor == 32
    assert proc(images / "a.png").shape == (3, 64, 64)  # 40x30 is scaled up to the 16-patch minimum
    vit = ImageProcessor.from_config(VisionConfig(arch="vit", image_size=224), ConnectorConfig())
    assert vit(images / "b.png").shape == (3, 224, 224)


def test_images_are_decoded_once_when_read_with_checks_then_collated(tmp_path, images, monkeypatch):
    """The reader verifies each image's file structure without decoding it; the collator decodes each
    image once. A file whose pixels fail only at decoding (a truncated JPEG) is a counted drop there."""
    from PIL import ImageFile

    from nativevlm.data.collate import Collator
    from nativevlm.data.tokenizer import Tokenizer

    full = Image.new("RGB", (64, 64))
    full.putdata([(x * 4 % 256, y * 4 % 256, (x * y) % 256) for y in range(64) for x in range(64)])
    full.save(images / "full.jpg", quality=95)
    data = (images / "full.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2])
    decoded = []
    load = ImageFile.ImageFile.load
    def counting_load(self):  # a file's tiles are decoded on the first load(); later calls are no-ops
        if self.tile:
            decoded.append(self.filename)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    path = write_json(tmp_path / "d.json", [
        {"id": name, "image": f"imgs/{name}", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}
        for name in ("a.png", "b.png", "cut.jpg")])
    samples, report = read_samples(path)
    assert report.n_skipped == 0 and decoded == []
    tok = Tokenizer.train(["what colour red"] * 20, vocab_size=300, min_frequency=1)
    collator = Collator(tok, ImageProcessor(patch_size=4, factor=8, min_patches=4, max_patches=64), max_length=512)
    batch = collator(samples)
    assert sorted(Path(f).name for f in decoded) == ["a.png", "b.png", "cut.jpg"]
    assert batch.n_samples == 2 and collator.dropped == {"corrupt image": 1}

"""Encoding (chat template, image blocks, pre-shifted assistant-only targets), truncation, padding and
packing. (Seeded, resumable sample order is the trainer's `MixtureSampler`, tested in test_train.py.)

The packing test runs a tiny reference causal model written here (embedding, image features spliced into
the <img> positions with one masked assignment, one attention layer over SDPA with a mask built from
document_ids, RoPE and an absolute position embedding from position_ids): packed and unpacked batches must
give the same loss.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nativevlm.data.collate import IGNORE, Collator, SampleDropped, encode_sample
from nativevlm.data.image import ImageProcessor
from nativevlm.data.sample import Sample
from nativevlm.data.tokenizer import Tokenizer

CORPUS = [f"the {c} {s} is {p} the {c2} one, answer {i}" for i, (c, s, p, c2) in enumerate(
    [("red", "square", "left of", "blue"), ("green", "circle", "above", "red")] * 30)]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def proc():
    return ImageProcessor(patch_size=4, factor=8, min_patches=4, max_patches=64)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, (size, colour) in enumerate([((24, 16), (255, 0, 0)), ((8, 24), (0, 255, 0)), ((16, 16), (0, 0, 255))]):
        img = Image.new("RGB", size, colour)
        img.putpixel((1, 1), (i * 90, 40, 200))
        img.save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def chat(*turns, images=(), sid="s"):
    roles = ["user", "assistant"] * len(turns)
    return Sample(id=sid, messages=[{"role": r, "content": c} for r, c in zip(roles, turns)], images=list(images))


@pytest.fixture(scope="module")
def samples(images):
    a, b, c = images
    return [
        chat("<image>\nwhat is left of the blue one?", "the red square", images=[a], sid="one"),
        chat("is the green circle above?", "yes", "and the red one?", "the red square is left of it", sid="text"),
        chat("<image> then <image>: same colour?", "no, red then green", images=[a, b], sid="two"),
        Sample("sys", [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": "<image>"},
                       {"role": "assistant", "content": "blue"}], [c]),
        chat("answer 7", "the green circle is above the red one, answer 7", sid="long"),
    ]


def test_text_only_matches_template_encoding(tok, proc, samples):
    enc = encode_sample(samples[1], tok, proc)
    assert enc.input_ids == tok.encode(tok.apply_chat_template(samples[1].messages))
    prompt = encode_sample(chat("is the green circle above?"), tok, proc, add_generation_prompt=True)
    assert prompt.input_ids == tok.encode(tok.apply_chat_template(chat("is the green circle above?").messages, True))
    assert prompt.n_loss_tokens == 0


def test_targets_are_preshifted_and_assistant_only(tok, proc, samples):
    enc = encode_sample(samples[1], tok, proc)
    ids, targets = enc.input_ids, enc.targets
    assert len(ids) == len(targets) and targets[-1] == IGNORE
    for t, target in enumerate(targets):
        assert target in (IGNORE, ids[t + 1] if t + 1 < len(ids) else None)
    predicted = [t for t in targets if t != IGNORE]
    assert tok.decode(predicted, skip_special_tokens=False) == "yes<|im_end|>the red square is left of it<|im_end|>"
    assert enc.n_loss_tokens == len(predicted)
    # The first answer token is predicted from the "\n" that ends the assistant header.
    first = next(t for t, target in enumerate(targets) if target != IGNORE)
    assert tok.decode(ids[:first + 1], skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_question_targets_are_the_users_words_after_an_image(tok, proc, samples, images):
    """`question_targets`: the user's text after the conversation's first image (and that turn's closing
    <|im_end|>) is predicted too, marked in `question`; text before any image, and everything else, as before."""
    im_end = tok.token_to_id("<|im_end|>")
    a = images[0]
    cases = [
        (samples[0], tok.encode("\nwhat is left of the blue one?") + [im_end]),
        (samples[2], tok.encode(" then ") + tok.encode(": same colour?") + [im_end]),  # not the 2nd image's block
        (chat("look at <image> what colour?", "red", images=[a]), tok.encode(" what colour?") + [im_end]),
        (chat("look at this<image>", "red", "and now?", "green", images=[a]), tok.encode("and now?") + [im_end]),
        (samples[1], []),  # no image
        (samples[3], []),  # nothing after the image
    ]
    for sample, question in cases:
        plain = encode_sample(sample, tok, proc)
        enc = encode_sample(sample, tok, proc, question_targets=True)
        assert enc.input_ids == plain.input_ids
        asked = [t for t, q in zip(enc.targets, enc.question or [False] * len(enc)) if q]
        assert asked == question, sample.id
        # every target is still the next token; the answers' are unchanged
        assert all(t in (IGNORE, enc.input_ids[i + 1]) for i, t in enumerate(enc.targets[:-1]))
        answers = [IGNORE if q else t for t, q in zip(enc.targets, enc.question or [False] * len(enc))]
        assert answers == plain.targets
        assert enc.n_loss_tokens == plain.n_loss_tokens + len(question)
        assert (enc.question is None) == (not question)
    prompt = encode_sample(chat("<image>\nwhat colour?", images=[a]), tok, proc, add_generation_prompt=True,
                           question_targets=True)
    assert prompt.n_loss_tokens == 0 and prompt.question is None


def test_question_weight_weighs_the_question_and_leaves_the_answers(tok, proc, samples):
    plain = Collator(tok, proc, max_length=256)(samples)
    assert plain.question_mask is None
    assert Collator(tok, proc, max_length=256, question_weight=0.0)(samples).question_mask is None
    batch = Collator(tok, proc, max_length=256, question_weight=0.25)(samples)
    assert torch.equal(batch.input_ids, plain.input_ids)
    assert torch.equal(batch.answer_targets(), plain.targets)
    q = batch.question_mask
    assert int(q.sum()) > 0 and bool((batch.targets[q] != IGNORE).all())
    assert torch.equal(batch.loss_weights[q], torch.full((int(q.sum()),), 0.25))
    assert torch.equal(batch.loss_weights[~q], plain.loss_weights[~q])
    assert torch.equal(batch.to("cpu").question_mask, q)
    with pytest.raises(ValueError, match="question_weight"):
        Collator(tok, proc, max_length=256, question_weight=-1.0)


def test_image_token_layout(tok, proc, samples, images):
    enc = encode_sample(samples[2], tok, proc)
    ids_of = tok.image_token_ids()
    assert [tuple(p.shape) for p in enc.pixel_values] == [(3, 16, 24), (3, 24, 8)]
    ids = torch.tensor(enc.input_ids)
    starts = (ids == ids_of["image_start_id"]).nonzero().flatten().tolist()
    ends = (ids == ids_of["image_end_id"]).nonzero().flatten().tolist()
    assert len(starts) == len(ends) == 2
    for start, end, pixels in zip(starts, ends, enc.pixel_values):
        rows, cols = pixels.shape[1] // 8, pixels.shape[2] // 8
        row = [ids_of["image_token_id"]] * cols + [ids_of["image_eol_id"]]
        assert enc.input_ids[start + 1:end] == row * rows
    assert int((ids == ids_of["image_token_id"]).sum()) == 2 * 3 + 3 * 1
    assert all(enc.targets[t] == IGNORE for t in range(ends[-1]))  # nothing before the answer is learned


def test_truncation_keeps_image_blocks_whole(tok, proc, samples):
    full = encode_sample(samples[0], tok, proc)
    cut = encode_sample(samples[0], tok, proc, max_length=len(full) - 3)
    assert cut.input_ids == full.input_ids[:len(full) - 3] and cut.targets[-1] == IGNORE
    assert 0 < cut.n_loss_tokens < full.n_loss_tokens
    with pytest.raises(SampleDropped, match="images need"):
        encode_sample(samples[0], tok, proc, max_length=8)
    image_end = full.input_ids.index(tok.image_token_ids()["image_end_id"]) + 1
    with pytest.raises(SampleDropped, match="no answer token"):
        encode_sample(samples[0], tok, proc, max_length=image_end + 2)

    collate = Collator(tok, proc, max_length=image_end + 2)
    batch = collate([samples[0], samples[0]])
    assert batch.input_ids.shape == (0, 0) and batch.n_samples == 0 and batch.pixel_values == []
    collate.max_length = 8
    collate([samples[0]])
    assert collate.dropped == {"answer truncated": 2, "images too long": 1}


def test_padded_batch(tok, proc, samples):
    batch = Collator(tok, proc, max_length=256)(samples)
    lengths = [len(encode_sample(s, tok, proc)) for s in samples]
    B, T = batch.input_ids.shape
    assert (B, T) == (len(samples), max(lengths)) and batch.document_ids is None
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert (batch.input_ids[~batch.attention_mask] == tok.pad_id).all()
    assert batch.position_ids[0, :lengths[0]].tolist() == list(range(lengths[0]))
    assert torch.equal(batch.loss_weights, (batch.targets != IGNORE).float())
    assert [tuple(p.shape) for p in batch.pixel_values] == [(3, 16, 24), (3, 16, 24), (3, 24, 8), (3, 16, 16)]
    assert batch.n_images == 4 and batch.n_loss_tokens == int((batch.targets != IGNORE).sum())


def pack_length(tok, proc, samples):
    """A row length that lets the longest and the shortest sample share a row."""
    lengths = sorted(len(encode_sample(s, tok, proc)) for s in samples)
    return lengths[-1] + lengths[0]


def test_packed_batch_layout(tok, proc, samples):
    lengths = [len(encode_sample(s, tok, proc)) for s in samples]
    max_length = pack_length(tok, proc, samples)
    batch = Collator(tok, proc, max_length=max_length, pack=True)(samples)
    B, T = batch.input_ids.shape
    assert B < len(samples) and T <= max_length
    assert batch.attention_mask.sum() == sum(lengths)
    docs = batch.document_ids
    assert torch.equal(batch.attention_mask, docs >= 0)
    for b in range(B):
        for d in range(int(docs[b].max()) + 1):
            where = (docs[b] == d).nonzero().flatten()
            assert batch.position_ids[b, where].tolist() == list(range(len(where)))
    image_ids = tok.image_token_ids()
    starts = (batch.input_ids == image_ids["image_start_id"]).nonzero().tolist()  # row-major order
    assert len(starts) == len(batch.pixel_values)


# -- packed == unpacked with a reference model ---------------------------------------------------------


def rope(x, pos):
    half = x.shape[-1] // 2
    freqs = pos[..., None].double() * (10000 ** (-torch.arange(half, dtype=torch.float64) / half))
    cos, sin = freqs.cos(), freqs.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class TinyCausalLM(torch.nn.Module):
    def __init__(self, vocab_size, image_token_id, factor, dim=16):
        super().__init__()
        self.image_token_id, self.factor = image_token_id, factor
        self.embed = torch.nn.Embedding(vocab_size, dim)
        # RoPE alone is blind to a constant position offset within a document; an absolute position
        # embedding makes the test catch a missing position reset too.
        self.position = torch.nn.Embedding(512, dim)
        self.vision = torch.nn.Linear(3, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.head = torch.nn.Linear(dim, vocab_size)

    def loss(self, batch):
        ids = batch.input_ids
        x = self.embed(ids) + self.position(batch.position_ids)
        # One feature per factor x factor cell, row-major: the layout the collator's <img> blocks promise.
        features = [self.vision(F.avg_pool2d(p.double(), self.factor).flatten(1).T) for p in batch.pixel_values]
        if features:
            x[ids == self.image_token_id] = torch.cat(features)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        pos = batch.position_ids
        docs = batch.document_ids
        if docs is None:
            docs = batch.attention_mask.long() - 1  # one document per row, padding = -1
        T = ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        mask = (docs[:, :, None] == docs[:, None, :]) & causal
        h = F.scaled_dot_product_attention(rope(q, pos), rope(k, pos), v, attn_mask=mask)
        ce = F.cross_entropy(self.head(h + x).flatten(0, 1), batch.targets.flatten(), reduction="none")
        w = batch.loss_weights.flatten().double()
        return (w * ce).sum() / w.sum()


@pytest.mark.parametrize("square_average,question_weight", [(False, 0.0), (True, 0.0), (False, 0.5), (True, 0.5)])
def test_packed_and_unpacked_give_the_same_loss(tok, proc, samples, square_average, question_weight):
    torch.manual_seed(0)
    model = TinyCausalLM(tok.vocab_size, tok.token_to_id("<img>"), proc.factor).double()
    max_length = pack_length(tok, proc, samples)
    kw = dict(square_average=square_average, question_weight=question_weight)
    padded = Collator(tok, proc, max_length, **kw)(samples)
    packed = Collator(tok, proc, max_length, pack=True, **kw)(samples)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]
    assert abs(model.loss(padded).item() - model.loss(packed).item()) < 1e-5
    if question_weight:  # the question's targets travel with their documents into the packed rows
        assert torch.equal(packed.targets[packed.question_mask].sort().values,
                           padded.targets[padded.question_mask].sort().values)
    # One row per sample gives the same loss too (the padded batch is not hiding a cross-sample effect).
    singles = [Collator(tok, proc, max_length, **kw)([s]) for s in samples]
    per_sample = torch.stack([model.loss(b) for b in singles])
    weight = torch.stack([b.loss_weights.sum().double() for b in singles])  # sum of one sample's weights
    if not question_weight:
        n = torch.tensor([b.n_loss_tokens for b in singles], dtype=torch.float64)
        assert torch.allclose(weight, n.sqrt() if square_average else n)
    assert abs((per_sample * weight).sum() / weight.sum() - model.loss(packed)).item() < 1e-5


def test_square_average_weights(tok, proc, samples):
    batch = Collator(tok, proc, max_length=256, square_average=True)(samples)
    for b in range(len(samples)):
        w = batch.loss_weights[b]
        n = int((w > 0).sum())
        assert torch.allclose(w[w > 0], torch.full((n,), 1 / math.sqrt(n)))
    # with the question's words as targets too: N counts the answer's tokens only, and each question token
    # weighs question_weight times the sample's answer tokens
    batch = Collator(tok, proc, max_length=256, square_average=True, question_weight=0.5)(samples)
    assert batch.question_mask is not None and batch.question_mask.any()
    for b in range(len(samples)):
        w, asked = batch.loss_weights[b], batch.question_mask[b]
        answer = (w > 0) & ~asked
        n = int(answer.sum())
        assert torch.allclose(w[answer], torch.full((n,), 1 / math.sqrt(n)))
        assert torch.allclose(w[asked], torch.full((int(asked.sum()),), 0.5 / math.sqrt(n)))

"""Samples -> model batches: chat template, image token blocks, loss targets, padding or packing.

Layout (NaViL): each `<image>` marker becomes `<img_start>`, then for each of `rows` rows `cols` x `<img>`
and an `<img_eol>`, then `<img_end>`, where (rows, cols) = `connector.token_blocks` of the image tensor's size
at its compression rate (the model's `downsample`, or a rate per image or per region from
`Sample.image_downsample`): the same function the model shapes its features with. An image cut into
regions (`connector.region_size`) has one such block of rows per region, in region order, inside one
`<img_start>` ... `<img_end>`. An image the processor splits into several views
(`ImageProcessor.segments`: multi-scale or tiled) becomes one such block per segment, each holding the rows
of its views in order. The model writes the encoder's features, row-major, into
the `<img>` positions with one masked assignment, so the sequence length is known here, before any vision
compute.

Targets are pre-shifted: `targets[t]` is the token to predict at position t (`input_ids[t + 1]` when that is
an assistant token, else -100). The model never shifts, so a packed row can't leak a prediction across a
document boundary, and the loss is on assistant tokens only (their content and closing `<|im_end|>`).
An assistant message may carry `thinking`: its reply is then `<think>...</think>` before the answer
(`data.thinking`), with the loss on thinking and answer; a direct reply has the loss on its answer only
(think-fusion SFT mixes the two).

`question_weight` > 0 also puts the loss on the user's words that follow an image (the question, and its
turn's closing `<|im_end|>`), each at that weight where an answer token has 1: the question's words predicted
from the image. Its targets are marked in `EncodedSample.question` and `Batch.question_mask`, so that
objectives reading the answers from the targets (`answer_words`, `answer_classes`) still see the answers only.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..errors import ImageError, SampleDropped
from ..model.batch import Batch
from ..model.connector import token_blocks
from .image import ImageProcessor
from .sample import IMAGE_MARKER, Sample
from .thinking import render_thinking
from .tokenizer import IM_END, IM_START, Tokenizer

IGNORE = -100


@dataclass
class EncodedSample:
    """One tokenised sample. `pixel_values` are in the order of the image blocks in `input_ids`, each
    tokenised at the compression rate in `image_downsample`."""

    input_ids: list[int]
    targets: list[int]
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    image_downsample: list[int] = field(default_factory=list)
    n_loss_tokens: int = 0
    id: str = ""
    question: Optional[list[bool]] = None  # per position: its target is a question token (question_weight > 0)

    def __len__(self) -> int:
        return len(self.input_ids)


def image_block(blocks: list[tuple[int, int]], ids: dict[str, int]) -> list[int]:
    """The token block standing for an image whose regions are `blocks` of rows x cols tokens."""
    out = [ids["image_start_id"]]
    for rows, cols in blocks:
        out += ([ids["image_token_id"]] * cols + [ids["image_eol_id"]]) * rows
    return out + [ids["image_end_id"]]


def encode_sample(
    sample: Sample,
    tokenizer: Tokenizer,
    image_processor: ImageProcessor,
    max_length: Optional[int] = None,
    add_generation_prompt: bool = False,
    question_targets: bool = False,
) -> EncodedSample:
    """Tokenise `sample` with the ChatML template, expanding each image marker into its token block.

    Each turn's header, content pieces and footer are encoded separately, which is exactly how the prompt
    and the generated reply are tokenised at inference (`add_generation_prompt=True` gives that prompt).
    Past `max_length` the text is cut from the end, never inside or before an image block: a sample whose
    images don't fit, or whose answer is cut away entirely, raises SampleDropped. With `question_targets` the
    user's text after the conversation's first image is a target too (marked in `EncodedSample.question`).
    """
    image_ids = tokenizer.image_token_ids()
    im_start, im_end = tokenizer.token_to_id(IM_START), tokenizer.token_to_id(IM_END)
    newline = tokenizer.encode("\n")
    ids: list[int] = []
    is_answer: list[bool] = []
    is_question: list[bool] = []
    pixel_values: list[torch.Tensor] = []
    view_rates: list[int] = []  # the compression rate of each view (all views of an image share its rate)
    n_images = 0
    images_end = 0  # where the last image block ends: the shortest prefix keeping every image
    rates = list(sample.image_downsample) or [image_processor.downsample for _ in sample.images]
    if len(rates) != len(sample.images):
        raise ValueError(f"sample {sample.id}: {len(rates)} compression rates for {len(sample.images)} images")

    def add(tokens: list[int], answer: bool, question: bool = False) -> None:
        ids.extend(tokens)
        is_answer.extend([answer] * len(tokens))
        is_question.extend([question] * len(tokens))

    images = iter(sample.images)
    for message in sample.messages:
        answer = message["role"] == "assistant"
        asks = message["role"] == "user" and question_targets and not add_generation_prompt
        asked = False  # this message put text after an image: its <|im_end|> is a target too
        add([im_start, *tokenizer.encode(f"{message['role']}\n")], False)
        content = render_thinking(message["thinking"], message["content"]) if message.get("thinking") else \
            message["content"]
        for k, piece in enumerate(content.split(IMAGE_MARKER)):
            if k:
                path = next(images, None)
                if path is None:
                    raise ValueError(f"sample {sample.id}: more {IMAGE_MARKER} markers than images")
                rate = rates[n_images]
                n_images += 1
                for views in image_processor.segments(path):
                    pixel_values.extend(views)
                    view_rates.extend([rate] * len(views))
                    grids = [b for v in views for b in token_blocks(*v.shape[-2:], image_processor.patch_size,
                                                                      rate, image_processor.region_size)]
                    add(image_block(grids, image_ids), False)
                images_end = len(ids)
            if piece:
                add(tokenizer.encode(piece), answer, asks and n_images > 0)
                asked = asked or (asks and n_images > 0)
        add([im_end], answer, asked)
        add(newline, False)
    if next(images, None) is not None:
        raise ValueError(f"sample {sample.id}: more images than {IMAGE_MARKER} markers")
    if add_generation_prompt:
        add([im_start, *tokenizer.encode("assistant\n")], False)

    if max_length is not None and len(ids) > max_length:
        if images_end > max_length:
            raise SampleDropped(
                "images too long", f"sample {sample.id}: its images need {images_end} > {max_length} tokens"
            )
        had_answer = any(is_answer)
        ids, is_answer, is_question = ids[:max_length], is_answer[:max_length], is_question[:max_length]
        if had_answer and not any(is_answer):
            raise SampleDropped(
                "answer truncated", f"sample {sample.id}: no answer token left within {max_length} tokens"
            )
    targets = [nxt if answer or asked else IGNORE
               for nxt, answer, asked in zip(ids[1:], is_answer[1:], is_question[1:])] + [IGNORE]
    n_loss = sum(t != IGNORE for t in targets)
    question = is_question[1:] + [False] if any(is_question) else None
    return EncodedSample(ids, targets, pixel_values, view_rates, n_loss, sample.id, question)


def pack_first_fit(samples: list[EncodedSample], max_length: int) -> list[list[EncodedSample]]:
    """Greedy first-fit: each sample goes into the first row with room, else a new row."""
    rows: list[list[EncodedSample]] = []
    fill: list[int] = []
    for s in samples:
        assert len(s) <= max_length, "samples are truncated to max_length before packing"
        for i in range(len(rows)):
            if fill[i] + len(s) <= max_length:
                rows[i].append(s)
                fill[i] += len(s)
                break
        else:
            rows.append([s])
            fill.append(len(s))
    return rows


class Collator:
    """List of Samples -> `Batch`. Samples that can't fit `max_length`, or whose image turns out corrupt
    when decoded, are dropped and counted in `self.dropped` (reason -> count) rather than failing the step.

    `pack=True` packs whole samples into rows of at most `max_length` tokens (first-fit, so the number of
    rows varies); positions restart at 0 for each document and `document_ids` tell the model where the
    block-diagonal attention mask goes. `square_average=True` weighs each sample's target tokens by
    1/sqrt(N_sample) (InternVL3.5), N_sample its answer tokens, between per-token averaging, which favours
    long answers, and per-sample averaging, which over-weights the tokens of short ones. `question_weight` > 0
    puts the loss on the user's words after an image too, each at that weight times the sample's
    (`encode_sample`; `Batch.question_mask`); the question's tokens do not count in N_sample, so a longer
    question does not lower its answer's weight.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_processor: ImageProcessor,
        max_length: int,
        pack: bool = False,
        square_average: bool = False,
        question_weight: float = 0.0,
    ):
        if not question_weight >= 0:
            raise ValueError(f"question_weight must be >= 0, got {question_weight}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length
        self.pack = pack
        self.square_average = square_average
        self.question_weight = question_weight
        self.dropped: Counter = Counter()

    def encode(self, samples: list[Sample]) -> list[EncodedSample]:
        encoded = []
        for s in samples:
            try:
                encoded.append(encode_sample(s, self.tokenizer, self.image_processor, self.max_length,
                                             question_targets=self.question_weight > 0))
            except SampleDropped as e:
                self.dropped[e.reason] += 1
            except ImageError:  # the reader checked the file's structure; decoding happens once, here
                self.dropped["corrupt image"] += 1
        return encoded

    def __call__(self, samples: list[Sample]) -> Batch:
        """Rows right-padded with pad_id (B = rows, T = longest row; see `Batch` for each field)."""
        return self.batch(self.encode(samples))

    def batch(self, encoded: list[EncodedSample]) -> Batch:
        """Encoded samples -> `Batch` (packed into rows with `pack`); `sample_ids` keeps their ids in order."""
        rows = pack_first_fit(encoded, self.max_length) if self.pack else [[e] for e in encoded]
        B, T = len(rows), max((sum(len(d) for d in row) for row in rows), default=0)
        input_ids = torch.full((B, T), self.tokenizer.pad_id, dtype=torch.long)
        targets = torch.full((B, T), IGNORE, dtype=torch.long)
        loss_weights = torch.zeros(B, T, dtype=torch.float32)
        position_ids = torch.zeros(B, T, dtype=torch.long)
        document_ids = torch.full((B, T), -1, dtype=torch.long)
        question_mask = torch.zeros(B, T, dtype=torch.bool) if any(e.question for e in encoded) else None
        pixel_values: list[torch.Tensor] = []
        image_downsample: list[int] = []
        for b, row in enumerate(rows):
            start = 0
            for d, doc in enumerate(row):
                end = start + len(doc)
                input_ids[b, start:end] = torch.tensor(doc.input_ids)
                targets[b, start:end] = torch.tensor(doc.targets)
                n_answer = doc.n_loss_tokens - (sum(doc.question) if doc.question else 0)  # answer targets
                weight = 1.0 / math.sqrt(n_answer) if self.square_average and n_answer else 1.0
                loss_weights[b, start:end] = (targets[b, start:end] != IGNORE).float() * weight
                if doc.question:
                    question_mask[b, start:end] = torch.tensor(doc.question)
                    loss_weights[b, start:end][question_mask[b, start:end]] *= self.question_weight
                position_ids[b, start:end] = torch.arange(len(doc))
                document_ids[b, start:end] = d
                pixel_values.extend(doc.pixel_values)
                image_downsample.extend(doc.image_downsample)
                start = end
        return Batch(input_ids=input_ids, targets=targets, loss_weights=loss_weights,
                     attention_mask=document_ids >= 0, position_ids=position_ids,
                     document_ids=document_ids if self.pack else None, pixel_values=pixel_values,
                     image_downsample=image_downsample, n_samples=len(encoded),
                     n_loss_tokens=sum(e.n_loss_tokens for e in encoded), sample_ids=[e.id for e in encoded],
                     question_mask=question_mask)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generation prompts -> (ids, mask) [B, longest prompt], left-padded so every row ends where its answer
    starts (the engine's prefill)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = True
    return ids, mask

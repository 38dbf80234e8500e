"""Sample-level transforms applied between reading and collation."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from .sample import IMAGE_MARKER, Sample


def merge_turns_by_image(samples: Sequence[Sample], max_turns: int = 8, seed: int = 0) -> list[Sample]:
    """Merge single-image samples that share an image into multi-turn conversations (as LLaVA's data is):
    the image is encoded once for several answers, which multiplies the supervision per image token.

    Turns are shuffled (seeded) within each image and split into conversations of at most `max_turns`
    question/answer pairs; the image marker stays on the first user turn. Samples with several images, no
    image, or more than one exchange pass through unchanged. Each merged sample keeps the first sample's
    meta with `families` listing every merged turn's family."""
    rng = random.Random(seed)
    groups: dict[str, list[Sample]] = defaultdict(list)
    passthrough: list[Sample] = []
    for s in samples:
        single = len(s.images) == 1 and len(s.messages) == 2 and s.messages[0]["role"] == "user"
        (groups[s.images[0]] if single else passthrough).append(s)
    merged: list[Sample] = []
    for image, group in groups.items():
        rng.shuffle(group)
        for start in range(0, len(group), max_turns):
            part = group[start:start + max_turns]
            messages = []
            for k, s in enumerate(part):
                question = s.messages[0]["content"].replace(IMAGE_MARKER, "").lstrip("\n")
                messages.append({"role": "user", "content": f"{IMAGE_MARKER}\n{question}" if k == 0 else question})
                messages.append(s.messages[1])
            meta = dict(part[0].meta, families=[s.meta.get("family") for s in part])
            merged.append(Sample(id=f"{part[0].id}+{len(part) - 1}", messages=messages, images=[image], meta=meta))
    return merged + passthrough

"""One training or evaluation example, independent of the file format it came from."""
from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_MARKER = "<image>"


def user_turn(text: str, n_images: int) -> str:
    """The prompt rule of this project, for a user turn with images: the images first, one marker each on
    its own line, then the text -- the layout of the training data, so evaluation, chat, the server and the
    data readers all ask the model the way it was taught."""
    return f"{IMAGE_MARKER}\n" * n_images + text


def strip_image_markers(text: str) -> str:
    """A user turn's text without its image markers (each with the newline after it, if any)."""
    return text.replace(f"{IMAGE_MARKER}\n", "").replace(IMAGE_MARKER, "").strip()


@dataclass
class Sample:
    """A conversation with its images.

    `messages` are `{"role": "system" | "user" | "assistant", "content": str}` (an assistant message may add
    `"thinking": str`, its reasoning: `data.thinking`); each `<image>` marker in a content string stands for
    the next entry of `images` (absolute paths, or an image file's bytes when read from shards; in
    marker order), so the collator can replace markers by
    image token blocks without knowing where the sample came from. `meta` carries
    the source record's own `meta` (task family, answer, ...) plus `source` = "file:line" or "file:index".
    `image_downsample` is the compression rate of each image (empty: the model's default rate): an int, or
    a tuple with one rate per region (`model.connector.Rate`), which the visual resolution router sets.
    """

    id: str
    messages: list[dict]
    images: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    image_downsample: list = field(default_factory=list)

    def n_markers(self) -> int:
        return sum(m["content"].count(IMAGE_MARKER) for m in self.messages)

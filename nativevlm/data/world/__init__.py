"""The built-in visual world: procedurally generated scenes (objects, text, charts) with exact ground truth,
rendered with Pillow, and captions, QA pairs, rationales and a text corpus derived from that ground truth."""
from .captions import caption
from .generate import generate_world
from .qa import QA, to_multiple_choice
from .questions import generate_questions
from .render import render_scene
from .scene import (PALETTE, PRESETS, SHAPES, Chart, Scene, TextItem, WorldConfig, WorldObject, make_config,
                    sample_scene, signature, split_of)

__all__ = [
    "PALETTE", "PRESETS", "QA", "SHAPES", "Chart", "Scene", "TextItem", "WorldConfig", "WorldObject",
    "caption", "generate_questions", "generate_world", "make_config", "render_scene", "sample_scene",
    "signature", "split_of", "to_multiple_choice",
]

"""Visual extraction tuning data: QA pairs become declarative statements by rule (fixed inputs: yes/no, counts,
colours, multiple choice, the fallback); each target holds every statement of its sample after the base
description; `nativevlm data vet` writes records whose images resolve from the output file. Think-fusion as a
recipe option: a share of the samples with a rationale think, the same ones on every load."""
import json
from pathlib import Path

import pytest

from nativevlm.cli import main
from nativevlm.config import ConfigError
from nativevlm.data.extract_think import extract_prompt, final_answer
from nativevlm.data.sample import Sample
from nativevlm.data.thinking import think_fusion
from nativevlm.data.vet import VET_PROMPT, declarative, description, question_stem, vet_records
from nativevlm.infer.pipelines import ExtractThink
from nativevlm.infer.types import Reply, Request

MC = "<image>\nWhat color is the circle?\nA. red\nB. blue\nC. green\nD. yellow\nAnswer with the letter of the correct option."


@pytest.mark.parametrize("question,answer,statement", [
    ("What color is the triangle?", "yellow", "The triangle is yellow."),
    ("What color is the text?", "red", "The text is red."),
    (MC, "B", "The circle is blue."),  # a letter reads as its option
    ("What shape is the blue object?", "star", "The blue object is a star."),
    ("How many blue objects are there?", "2", "There are 2 blue objects."),
    ("How many blue objects are there?", "1", "There is 1 blue object."),
    ("How many categories does the chart show?", "1", "The chart shows 1 category."),
    ("How many letters does the word in the image have?", "5", "The word in the image has 5 letters."),
    ("How many circles and squares are there in total?", "3", "There are 3 circles and squares in total."),
    ("How many other objects have the same color as the star?", "1",
     "1 other object has the same color as the star."),
    ("How many objects are not red?", "2", "2 objects are not red."),
    ("Is there a green star?", "yes", "There is a green star."),
    ("Is there a green star?", "no", "There is no green star."),
    ("Are there more circles than stars?", "no", "There are not more circles than stars."),
    ("Is the red circle above the blue square?", "yes", "The red circle is above the blue square."),
    ("Is the red circle to the left of the blue square?", "no", "The red circle is not to the left of the blue square."),
    ("Is the red circle small or large?", "large", "The red circle is large."),
    ("Is the red circle in the top or bottom half of the image?", "top", "The red circle is in the top half of the image."),
    ("Is the number in the image greater than 125?", "yes", "The number in the image is greater than 125."),
    ("What is written in the image?", "cloud", 'The text in the image is "cloud".'),
    ("What type of chart is this?", "pie", "This is a pie chart."),
    ("Which category has the largest value?", "dog", "The category that has the largest value is dog."),
    ("What is the value of dog?", "7", "The value of dog is 7."),
    ("How much larger is the largest value than the smallest value?", "5",
     "The largest value is 5 larger than the smallest value."),
    ("Why is the sky blue?", "scattering", 'The answer to "Why is the sky blue?" is scattering.'),
    ("Is the dog happy?", "yes", 'The answer to "Is the dog happy?" is yes.'),
])
def test_declarative_statements(question, answer, statement):
    assert declarative(question, answer) == statement


def test_question_stem_and_prompt_drop_markers_options_and_instructions():
    assert question_stem(MC) == ("What color is the circle?", {"A": "red", "B": "blue", "C": "green", "D": "yellow"})
    assert extract_prompt(VET_PROMPT, MC).endswith("pay attention to what this question needs: What color is the circle?")


def test_each_target_holds_every_statement_after_the_base_description():
    records = [{"id": "a", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nHow many red objects are there?"}, {"from": "gpt", "value": "2"},
        {"from": "human", "value": "Is there a blue star?"}, {"from": "gpt", "value": "no"}],
        "meta": {"answer": "2", "scene_id": "s"}},
        {"id": "b", "image": "b.png", "conversations": [{"from": "human", "value": MC}, {"from": "gpt", "value": "A"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    base = "A white image with 2 red squares. There are 2 red objects."
    out, skipped = vet_records(records, {"a.png": base})
    assert skipped == {"no image": 1}
    a, b = out
    assert a["meta"] == {"scene_id": "s", "family": "vet", "kind": "perception",
                         "statements": ["There are 2 red objects.", "There is no blue star."]}
    target = a["conversations"][1]["value"]
    assert target == base + " There is no blue star."  # a statement the base already holds is not repeated
    assert all(s in target for s in a["meta"]["statements"])
    assert a["conversations"][0]["value"] == "<image>\n" + VET_PROMPT.format(
        question="How many red objects are there? Is there a blue star?")
    assert b["conversations"][1]["value"] == "The circle is red."  # no base: the statements alone
    assert description("", ["X.", "X.", "Y."]) == "X. Y."


def test_data_vet_command_on_the_world(tmp_path, capsys):
    from nativevlm.data.world import generate_world

    generate_world(str(tmp_path / "w"), 4, split="train", progress=False)
    out = tmp_path / "vet" / "train_vet.json"
    assert main(["data", "vet", str(tmp_path / "w" / "train.json"), "--out", str(out),
                 "--descriptions", str(tmp_path / "w" / "train_captions.json")]) == 0
    assert "16 VET records (16 on a base description)" in capsys.readouterr().out
    records = json.loads(out.read_text())
    captions = {r["image"]: r["conversations"][1]["value"]
                for r in json.loads((tmp_path / "w" / "train_captions.json").read_text())}
    for r in records:
        assert (out.parent / r["image"]).is_file()
        target = r["conversations"][1]["value"]
        assert target.startswith(captions[Path(r["image"]).relative_to("../w").as_posix()])
        assert all(s in target for s in r["meta"]["statements"]) and len(r["meta"]["statements"]) == 1


def rationale_sample(i: int) -> Sample:
    return Sample(f"s{i}", [{"role": "user", "content": "How many circles and squares?"},
                            {"role": "assistant", "content": "3"}],
                  meta={"rationale": "Count the circles: 2. Count the squares: 1. 2 + 1 = 3. Answer: 3"})


def test_think_fusion_turns_a_share_of_rationales_into_thinking_the_same_ones_each_time():
    samples = [rationale_sample(i) for i in range(400)] + [Sample("plain", [{"role": "assistant", "content": "x"}])]
    fused = [think_fusion(s, 0.3, "seed") for s in samples]
    thinking = [s for s in fused if s.messages[-1].get("thinking")]
    assert 0.24 < len(thinking) / 400 < 0.36
    assert thinking[0].messages[-1] == {"role": "assistant", "content": "3",
                                        "thinking": "Count the circles: 2. Count the squares: 1. 2 + 1 = 3."}
    assert [s.id for s in thinking] == [s.id for s in (think_fusion(s, 0.3, "seed") for s in samples)
                                        if s.messages[-1].get("thinking")]
    assert {s.id for s in thinking} != {s.id for s in (think_fusion(s, 0.3, "other") for s in samples)
                                        if s.messages[-1].get("thinking")}
    assert all(not think_fusion(s, 0.0, "seed").messages[-1].get("thinking") for s in samples)
    assert sum(bool(think_fusion(s, 1.0, "seed").messages[-1].get("thinking")) for s in samples) == 400
    assert samples[0].messages[-1] == {"role": "assistant", "content": "3"}  # the source sample is untouched


def test_a_recipe_source_with_thinking_trains_on_think_fusion_samples(tmp_path):
    from nativevlm.train.config import DataSource, StageConfig
    from nativevlm.train.data import StageData

    records = [{"id": f"q{i}", "conversations": [{"from": "human", "value": "How many?"}, {"from": "gpt", "value": "3"}],
                "meta": {"rationale": "One, two, three. Answer: 3"}} for i in range(50)]
    (tmp_path / "qa.json").write_text(json.dumps(records))
    for ratio, lo, hi in ((0.0, 0, 0), (0.5, 15, 35), (1.0, 50, 50)):
        stage = StageConfig(data=[DataSource(str(tmp_path / "qa.json"), thinking=ratio)])
        data = StageData(stage, collator=None, seed="0")
        n = sum(m.get("thinking") == "One, two, three." for s in data.sources[0] for m in s.messages)
        assert lo <= n <= hi
    from nativevlm.train.recipe import recipe_from_dict

    with pytest.raises(ConfigError, match=r"stages\[0\]\.data\[0\]\.thinking: the share .* in \[0, 1\]; got 1.5"):
        recipe_from_dict({"kind": "lm", "tokenizer": str(tmp_path), "stages": [
            {"data": [{"path": str(tmp_path / "qa.json"), "thinking": 1.5}]}]})


@pytest.mark.parametrize("text,answer", [
    ("The circles: 2. The squares: 1. 2 + 1 = 3.\nAnswer: 3", "3"),
    ("answer: blue\nAnswer: red", "red"),
    ("Answer:\nno", "no"),
    ("Answer:", "Answer:"),  # nothing after it: the reply as it is
    ("3", "3"),
])
def test_final_answer(text, answer):
    assert final_answer(text) == answer


def test_extract_think_answers_with_the_reasoners_final_line_and_keeps_its_thinking():
    class Perceiver:
        chunk_size = 8

        def __call__(self, requests):
            return [Reply("two red circles and a square") for _ in requests]

    class Thinker:
        chunk_size = 8

        def __call__(self, requests):
            return [Reply("Circles: 2, squares: 1.\nAnswer: 3", trace={"thinking": "count 2 then 1"})
                    for _ in requests]

    [reply] = ExtractThink(Perceiver(), Thinker(), VET_PROMPT)([Request([], MC)])
    assert reply.text == "3"
    assert reply.trace == {"description": "two red circles and a square", "thinking": "count 2 then 1",
                           "reasoning": "Circles: 2, squares: 1.\nAnswer: 3"}

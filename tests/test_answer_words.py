"""The answer-words objective: which answer words each image gets (padded and packed batches, a
two-image conversation skipped), the loss's known values, and that it trains the image side only."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nativevlm.data.collate import Collator
from nativevlm.data.image import ImageProcessor
from nativevlm.data.sample import Sample
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.train.objectives.answer_words import answer_words_loss, image_turns, turn_bags

CORPUS = [f"the {c} {s} is left of it, answer {i}" for i, (c, s) in enumerate([("red", "square"), ("green", "ring")] * 30)]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=320)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aw")
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def chat(*turns, images=(), sid="s"):
    roles = ["user", "assistant"] * len(turns)
    return Sample(id=sid, messages=[{"role": r, "content": c} for r, c in zip(roles, turns)], images=list(images))


@pytest.mark.parametrize("pack", [False, True])
def test_each_image_gets_its_own_conversations_answer_words(tok, images, pack):
    a, b, c = images
    samples = [
        chat("<image>\nwhat is it?", "red square", "and its colour?", "red", images=[a], sid="two turns"),
        chat("no image here?", "green", sid="text"),
        chat("<image> and <image>?", "green ring", images=[b, c], sid="two images"),
        chat("<image>\nwhat is it?", "green ring", images=[c], sid="one"),
    ]
    proc = ImageProcessor(patch_size=4, factor=8, min_patches=4, max_patches=64)
    batch = Collator(tok, proc, max_length=512, pack=pack)(samples)
    image_start = tok.image_token_ids()["image_start_id"]
    turns = image_turns(batch.input_ids, batch.targets, batch.document_ids, image_start)
    bags = turn_bags(turns, tok.special_ids())
    assert len(bags) == batch.n_images == 4
    assert bags[0] == tok.encode("red square") + tok.encode("red")  # both answers about the one image
    assert bags[1] is None and bags[2] is None  # which image a word of a two-image answer is about is unknown
    assert bags[3] == tok.encode("green ring")


def test_loss_known_values_mixture_over_tokens():
    table = torch.eye(4)  # word w's embedding is the w-th axis
    # One token exactly on word 2, three on word 0: with a large scale each token's softmax is one-hot, so
    # p(2) = 1/4 and p(0) = 3/4.
    tokens = torch.tensor([[0.0, 0, 5, 0], [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]])
    loss, n = answer_words_loss([tokens], [[2]], table, scale=200.0, pool="tokens")
    assert n == 1 and loss.item() == pytest.approx(math.log(4), abs=1e-5)
    loss, _ = answer_words_loss([tokens], [[2, 0]], table, scale=200.0, pool="tokens")
    assert loss.item() == pytest.approx((math.log(4) - math.log(0.75)) / 2, abs=1e-5)
    # Scale 0: every token's softmax is uniform over the 4 words.
    loss, _ = answer_words_loss([tokens], [[1]], table, scale=0.0, pool="tokens")
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)
    # Images without a bag (no answer words, or a skipped conversation) do not count toward the mean.
    loss2, n = answer_words_loss([tokens, tokens * 0 + 1], [[2], None], table, scale=200.0, pool="tokens")
    assert n == 1 and loss2.item() == pytest.approx(math.log(4), abs=1e-5)


def test_loss_known_values_mean_token():
    table = torch.eye(3)
    # The mean token is (1, 1, 0) / 2: cosine 1/sqrt(2) with words 0 and 1, 0 with word 2.
    tokens = torch.tensor([[2.0, 0, 0], [0, 2, 0]])
    c = 1 / math.sqrt(2)
    for scale in (1.0, 10.0):
        z = math.exp(scale * c) * 2 + 1
        loss, _ = answer_words_loss([tokens], [[0]], table, scale=scale)
        assert loss.item() == pytest.approx(-math.log(math.exp(scale * c) / z), abs=1e-5)
        loss, _ = answer_words_loss([tokens], [[2]], table, scale=scale)
        assert loss.item() == pytest.approx(-math.log(1 / z), abs=1e-5)
    # The same tokens as a mixture: each token is one-hot on its word at a large scale, so p(0) = 1/2.
    loss, _ = answer_words_loss([tokens], [[0]], table, scale=200.0, pool="tokens")
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("pool", ["mean", "tokens"])
def test_gradient_reaches_the_tokens_not_the_embedding_table(pool):
    torch.manual_seed(0)
    table = torch.randn(6, 8, requires_grad=True)
    tokens = torch.randn(5, 8, requires_grad=True)
    loss, _ = answer_words_loss([tokens], [[3]], table, scale=10.0, pool=pool)
    loss.backward()
    assert table.grad is None and tokens.grad is not None and tokens.grad.abs().sum() > 0
    # A step along the gradient makes the answer word more likely.
    with torch.no_grad():
        after, _ = answer_words_loss([tokens - 0.5 * tokens.grad], [[3]], table, scale=10.0, pool=pool)
    assert after < loss
    cos = F.cosine_similarity(tokens - 0.5 * tokens.grad, table[3:4].detach()).max()
    assert cos > F.cosine_similarity(tokens, table[3:4].detach()).max()


def test_words_that_answer_most_conversations_are_left_out(tok):
    """`max_share`: answer tokens found in more than that share of the data's one-image conversations (yes,
    no: they answer every kind of image) are counted once per conversation and left out of the bags."""
    from nativevlm.train.objectives.answer_words import common_answer_tokens, common_tokens

    class Data:
        sources = [[chat("<image>\nq", "yes", images=["x"]) for _ in range(6)]
                   + [chat("<image>\nq", "red red red", images=["x"]) for _ in range(3)]
                   + [chat("<image>\nq", "green", images=["x"])]
                   + [chat("no image", "yes")] * 20]  # no image: not counted
    yes, red = set(tok.encode("yes")), set(tok.encode("red red red"))
    assert yes and red and not yes & red and not set(tok.encode("green")) & (yes | red)
    assert common_answer_tokens(Data.sources, tok, 0.5, 1000) == yes  # 6 of 10 image conversations
    assert common_answer_tokens(Data.sources, tok, 0.25, 1000) == yes | red  # 3 of 10, however often in each
    assert common_answer_tokens(Data.sources, tok, 0.6, 1000) == set()
    # several role groups counted in one pass, each on its own: the questions' "q" is in all 10
    answers, questions = common_tokens(Data.sources, tok, 0.5, 1000, [("assistant",), ("user",)])
    assert answers == yes and questions == set(tok.encode("q")) - set(tok.special_ids())


@pytest.mark.parametrize("pack", [False, True])
def test_yes_no_questions_give_their_words_to_the_bag_or_the_negatives(tok, images, pack):
    """`question_words`: a question answered yes gives its words to the image's bag, one answered no to its
    negatives; other answers, and the chat template's tokens, give nothing; two images: skipped."""
    from nativevlm.train.objectives.answer_words import yes_no_words

    a, b, c = images
    samples = [
        chat("<image>\nis it red?", "yes", "is it green?", "no", "what is it?", "square", images=[a], sid="1"),
        chat("<image> and <image>?", "yes", images=[b, c], sid="two images"),
        chat("<image>\nleft of it?", "No.", images=[c], sid="2"),
    ]
    proc = ImageProcessor(patch_size=4, factor=8, min_patches=4, max_patches=64)
    batch = Collator(tok, proc, max_length=512, pack=pack)(samples)
    image_start = tok.image_token_ids()["image_start_id"]
    template = set(tok.encode(tok.apply_chat_template([{"role": r, "content": ""} for r in ("user", "assistant")])))
    ignore = tok.special_ids() | template | set(tok.encode("is it"))
    verdicts = {"yes": True, "no": False}

    def verdict(ids):
        return verdicts.get(tok.decode(ids).strip().lower().removesuffix("."))

    turns = image_turns(batch.input_ids, batch.targets, batch.document_ids, image_start)
    out = [ts and yes_no_words(ts, ignore, verdict) for ts in turns]
    assert len(out) == 4
    words = lambda text: [i for i in tok.encode(text) if i not in ignore]  # noqa: E731
    assert out[0] == ([words("is it red?")], [words("is it green?")])
    assert out[1] is None and out[2] is None
    assert out[3] == ([], [words("left of it?")])
    assert words("is it red?") and words("left of it?")


def test_negative_groups_known_value():
    """A negative group g (the words of a question answered no) adds -log(1 - prod_{n in g} p(n)) to the
    image's mean of terms: not all of its words are in the image, though any one may be."""
    table = torch.eye(3)
    tokens = torch.tensor([[2.0, 0, 0], [0, 2, 0]])  # mean token (1, 1, 0) / 2
    c = 1 / math.sqrt(2)
    z = math.exp(c) * 2 + 1
    p0, p2 = math.exp(c) / z, 1 / z
    loss, n = answer_words_loss([tokens], [[]], table, scale=1.0, negatives=[[[2]]])
    assert n == 1 and loss.item() == pytest.approx(-math.log(1 - p2), abs=1e-5)
    loss, _ = answer_words_loss([tokens], [[0]], table, scale=1.0, negatives=[[[2]]])
    assert loss.item() == pytest.approx((-math.log(p0) - math.log(1 - p2)) / 2, abs=1e-5)
    loss, _ = answer_words_loss([tokens], [[0]], table, scale=1.0, negatives=[[[2], [0, 2]]])
    assert loss.item() == pytest.approx((-math.log(p0) - math.log(1 - p2) - math.log(1 - p0 * p2)) / 3, abs=1e-5)
    loss, n = answer_words_loss([tokens], [None], table, scale=1.0, negatives=[None])
    assert n == 0


def test_max_pool_known_values():
    """`pool: max`: a bag word reads the token that gives it most, -log max_i q_i(a); a group's words must
    sit at one token, -max_i mean_{a in g} log q_i(a); a negative group's joint is max_i prod q_i(n)."""
    table = torch.eye(3)
    tokens = torch.tensor([[1.0, 0, 0], [0, 1, 1]])  # token 0 says word 0; token 1 words 1 and 2
    s = 2.0
    q = [[math.exp(s * v) for v in row] for row in ([1, 0, 0], [0, 2 ** -0.5, 2 ** -0.5])]
    q = [[v / sum(row) for v in row] for row in q]
    loss, n = answer_words_loss([tokens], [[0, 1]], table, scale=s, pool="max")
    assert n == 1 and loss.item() == pytest.approx(-(math.log(q[0][0]) + math.log(q[1][1])) / 2, abs=1e-5)
    loss, _ = answer_words_loss([tokens], [[]], table, scale=s, pool="max", groups=[[[1, 2]]])
    assert loss.item() == pytest.approx(-(math.log(q[1][1]) + math.log(q[1][2])) / 2, abs=1e-5)
    loss, _ = answer_words_loss([tokens], [[]], table, scale=s, pool="max", negatives=[[[0, 2]]])
    joint = max(q[0][0] * q[0][2], q[1][0] * q[1][2])
    assert loss.item() == pytest.approx(-math.log(1 - joint), abs=1e-5)
    # without max, a group is read word by word from the mean token, as bag words are
    a, _ = answer_words_loss([tokens], [[]], table, scale=s, groups=[[[1, 2]]])
    b, _ = answer_words_loss([tokens], [[1, 2]], table, scale=s)
    assert a.item() == pytest.approx(b.item())


def test_max_pool_binds_words_to_one_token():
    """Two images with the same four attributes, bound differently: (red, square) at one token and (blue,
    circle) at another, or (red, circle) and (blue, square). The mean token cannot tell them apart; with
    `pool: max` a "red square" group is likelier, and a "no" to it costlier, where red and square share a
    token. This is what lets the encoder learn which attribute goes with which object."""
    table = torch.eye(4)  # red, blue, square, circle
    bound = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])
    crossed = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
    red_square = [[[0, 2]]]
    for pool in ("mean", "tokens"):
        x, _ = answer_words_loss([bound], [[]], table, scale=5.0, pool=pool, groups=red_square)
        y, _ = answer_words_loss([crossed], [[]], table, scale=5.0, pool=pool, groups=red_square)
        assert x.item() == pytest.approx(y.item(), abs=1e-6)
    x, _ = answer_words_loss([bound], [[]], table, scale=5.0, pool="max", groups=red_square)
    y, _ = answer_words_loss([crossed], [[]], table, scale=5.0, pool="max", groups=red_square)
    assert x.item() < y.item() - 0.5
    x, _ = answer_words_loss([bound], [[]], table, scale=5.0, pool="max", negatives=red_square)
    y, _ = answer_words_loss([crossed], [[]], table, scale=5.0, pool="max", negatives=red_square)
    assert x.item() > y.item() + 0.1


def test_turns_split_each_conversation_into_its_questions_and_answers(tok, images):
    samples = [chat("<image>\nis it red?", "yes", "what is it?", "red square", images=[images[0]], sid="1")]
    proc = ImageProcessor(patch_size=4, factor=8, min_patches=4, max_patches=64)
    batch = Collator(tok, proc, max_length=512, pack=False)(samples)
    (turns,) = image_turns(batch.input_ids, batch.targets, batch.document_ids, tok.image_token_ids()["image_start_id"])
    assert [(tok.decode(q).strip(), tok.decode(a).strip()) for q, a in turns] == [
        ("user\n\nis it red?\nassistant", "yes"), ("user\nwhat is it?\nassistant", "red square")]


@pytest.mark.parametrize("pack", [False, True])
def test_a_question_loss_leaves_the_objective_and_val_reading_the_answers(tok, images, pack):
    """With the question's words as targets too (the collator's `question_weight`), `answer_words` (bags and
    `question_words`' yes/no groups) computes the very loss it computes on answers-only batches, and so does
    the trainer's val loss (the question's loss trains; val scores the answers)."""
    from nativevlm.config import ModelConfig, from_dict
    from nativevlm.model.vlm import NativeVLM
    from nativevlm.train.objectives import MicroBatch, StageContext, StepInfo
    from nativevlm.train.objectives.answer_words import AnswerWords, AnswerWordsOptions
    from trainkit import tiny_model

    a, b, c = images
    samples = [
        chat("<image>\nis it red?", "yes", "is it green?", "no", "what is it?", "red square", images=[a], sid="1"),
        chat("<image>\nis it a ring?", "yes", images=[b], sid="2"),
        chat("<image>\nwhat is it?", "green ring", images=[c], sid="3"),
    ]
    torch.manual_seed(0)
    model = NativeVLM(from_dict(ModelConfig, {**tiny_model(vocab=tok.vocab_size), **tok.image_token_ids()}))
    proc = ImageProcessor.from_config(model.config.vision, model.config.connector)
    obj = AnswerWords(AnswerWordsOptions(question_words=True, max_share=1.0))
    stage = type("Stage", (), {"name": "all", "data": [None]})()
    data = type("Data", (), {"sources": [samples]})()
    obj.setup(StageContext(model=model, tokenizer=tok, stage=stage, data=data, processor=proc,
                           device=torch.device("cpu"), log=lambda *a: None))
    plain = Collator(tok, proc, max_length=512, pack=pack)(samples)
    asked = Collator(tok, proc, max_length=512, pack=pack, question_weight=0.5)(samples)
    assert int((asked.targets != -100).sum()) > int((plain.targets != -100).sum())
    assert torch.equal(asked.answer_targets(), plain.targets)
    info = StepInfo(step=0, stage_step=0, micro_batches=1, world=1, rank=0, target_weight=torch.tensor(1.0))
    losses = [obj.loss(model, MicroBatch(model, batch, 0), info).loss.item() for batch in (plain, asked)]
    assert losses[0] > 0 and losses[0] == pytest.approx(losses[1], rel=1e-6)
    from nativevlm.train.step import evaluate
    val = [evaluate(model, [batch], torch.device("cpu"), bf16=False) for batch in (plain, asked)]
    assert val[0] == pytest.approx(val[1], rel=1e-6)
    assert model(asked).loss.item() != pytest.approx(val[0], rel=1e-3)  # training does see the question

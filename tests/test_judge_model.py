"""The curation judge backed by a real nativevlm model: its score is the model's answer log-likelihood."""
import json

import torch

from nativevlm import LanguageConfig, LanguageModel, NativeVLM, VisionConfig
from nativevlm.data.collate import Collator
from nativevlm.data.formats import read_samples
from nativevlm.data.image import ImageProcessor
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.infer.chat import answer_logprob, model_logprob_fn


def test_answer_logprob_is_minus_the_training_loss_sum(train_world, tmp_path):
    torch.manual_seed(0)
    tok = Tokenizer.load(train_world["tok"])
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                      num_kv_heads=1, intermediate_size=64))
    vlm = NativeVLM.from_language_model(lm, vision=VisionConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                                intermediate_size=64),
                                        image_token_ids=tok.image_token_ids()).eval()
    vlm.save_pretrained(tmp_path / "m")
    tok.save(tmp_path / "m")
    samples, _ = read_samples(train_world["captions"])
    s = samples[0]
    prompt = s.messages[0]["content"].replace("<image>\n", "")
    answer = s.messages[1]["content"]
    processor = ImageProcessor.from_config(vlm.config.vision, vlm.config.connector)
    batch = Collator(tok, processor, max_length=256)([s])
    with torch.no_grad():
        loss_sum = vlm(batch.input_ids, pixel_values=batch.pixel_values, targets=batch.targets).loss_sum
    score = answer_logprob(vlm, tok, s.images[0], prompt, answer)
    assert abs(score + float(loss_sum)) < 1e-4
    # The folder-backed function (what `nativevlm data curate --judge-model DIR` uses) gives the same score.
    judge_fn = model_logprob_fn(str(tmp_path / "m"))
    assert abs(judge_fn(s.images[0], prompt, answer) - score) < 1e-4
    assert abs(judge_fn(s.images[0], s.messages[0]["content"], answer) - score) < 1e-4  # raw prompt with marker
    assert json.loads((tmp_path / "m" / "config.json").read_text())["image_token_id"] == tok.image_token_ids()["image_token_id"]

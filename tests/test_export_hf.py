"""`nativevlm export hf`: the exported folder, loaded by transformers in a fresh process that cannot import
nativevlm, gives our input ids, pixel values, logits and greedy answers.

One child process serves every model (importing transformers is the slow part): it writes what transformers
computed, and this process compares it with what nativevlm computes."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from nativevlm.cli import main
from nativevlm.config import ConnectorConfig, LanguageConfig, MoEConfig, VisionConfig
from nativevlm.data.collate import encode_sample, left_pad
from nativevlm.data.image import ImageProcessor, fit_size
from nativevlm.data.sample import Sample, user_turn
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.errors import CheckpointError, UserError
from nativevlm.export.hf import REMOTE, export_hf
from nativevlm.infer.chat import ask, load_model_and_tokenizer
from nativevlm.infer.engine import Engine, Request, SamplingParams
from nativevlm.model.hub import save_language_model
from nativevlm.model.language import LanguageModel
from nativevlm.model.vlm import NativeVLM

pytest.importorskip("transformers")

CORPUS = ["what colour is the square", "a red square left of a blue circle", "the circle is green"] * 20
QUESTION = "what colour is the square"
NEW_TOKENS = 8
PROMPTS = [["a.png"], ["b.png", "a.png"]]  # the images of the two prompts of the batch

# name -> (language, vision, connector, moe). "quickstart": the quickstart's shape (native encoder, Qwen3-style
# q/k norms, grouped-query attention, tied embeddings), dense. "experts": NaViL's modality experts with
# per-modality norms, Qwen2-style q/k/v biases, an untied head, an input-embedding multiplier, both connector
# rates. "vit-moe": the SigLIP-style ViT of the compositional baseline with a sparse top-2 MoE FFN.
MODELS = {
    "quickstart": (dict(hidden_size=48, num_layers=2, num_heads=3, num_kv_heads=1, intermediate_size=64, qk_norm=True),
                   dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=8, min_patches=4,
                        max_patches=64),
                   dict(), dict()),
    "experts": (dict(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64, qkv_bias=True,
                     tie_word_embeddings=False, embedding_multiplier=3.0),
                dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=8, min_patches=4,
                     max_patches=64),
                dict(extra_downsample=4), dict(modality_experts=True, per_modality_norms=True)),
    "vit-moe": (dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=48),
                dict(arch="vit", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=8,
                     image_size=32, bias=True, post_norm=True),
                dict(), dict(num_experts=4, top_k=2)),
}
RATES = {"experts": [[4], [2, 4]]}  # per prompt, per image, the second path (mlp2) in use; default: the model's


def prompt_rates(name: str) -> list[list[int]]:
    return RATES.get(name, [[] for _ in PROMPTS])


def build_vlm(tok: Tokenizer, name: str) -> NativeVLM:
    language, vision, connector, moe = MODELS[name]
    torch.manual_seed(0)
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, **language), MoEConfig(**moe))
    vlm = NativeVLM.from_language_model(lm, vision=VisionConfig(**vision), connector=ConnectorConfig(**connector),
                                        modality_experts=moe.get("modality_experts", False),
                                        per_modality_norms=moe.get("per_modality_norms", False),
                                        image_token_ids=tok.image_token_ids())
    with torch.no_grad():  # every weight (norms and the visual experts' copies too) off its initial value
        for p in vlm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vlm.eval()


def ours(root: Path, name: str):
    """Our model and tokenizer as training left them, and the prompts tokenised as `ask` does."""
    model, tok = load_model_and_tokenizer(root / name)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    encoded = []
    for images, rates in zip(PROMPTS, prompt_rates(name)):
        content = user_turn(QUESTION, len(images))
        sample = Sample(id="q", messages=[{"role": "user", "content": content}],
                        images=[str(root / i) for i in images], image_downsample=rates)
        encoded.append(encode_sample(sample, tok, processor, add_generation_prompt=True))
    return model, tok, encoded


def prompt_batch(encoded, pad_id: int) -> SimpleNamespace:
    """The prompts left-padded as the engine pads them, with their images and rates in row order."""
    ids, mask = left_pad([e.input_ids for e in encoded], pad_id)
    return SimpleNamespace(input_ids=ids, attention_mask=mask,
                           pixel_values=[p for e in encoded for p in e.pixel_values],
                           image_downsample=[r for e in encoded for r in e.image_downsample])


CHILD = textwrap.dedent("""
    import json, sys
    import torch

    class NoNativeVLM:
        def find_spec(self, name, path=None, target=None):
            if name == "nativevlm" or name.startswith("nativevlm."):
                raise ImportError(f"{name} is blocked in this process")

    sys.meta_path.insert(0, NoNativeVLM())
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    spec = json.loads(sys.argv[1])
    results = {}
    for name, folder in spec["vlms"].items():
        auto = AutoModelForImageTextToText if name == "quickstart" else AutoModelForCausalLM
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        texts, images, rates = [], [], []
        for prompt_images, prompt_rates in spec["prompts"][name]:
            content = [{"type": "image"} for _ in prompt_images] + [{"type": "text", "text": spec["question"]}]
            texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                       add_generation_prompt=True, tokenize=False))
            images += prompt_images
            rates += prompt_rates
        rates = rates or None
        batch = processor(text=texts, images=images, downsample=rates, return_tensors="pt")
        one = processor(text=texts[0], images=images[:1], downsample=rates[:1] if rates else None,
                        return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
            out = model.generate(**one, max_new_tokens=spec["new_tokens"], output_logits=True,
                                 return_dict_in_generate=True)
        new = out.sequences[0, one["input_ids"].shape[1]:]
        content = [{"type": "image", "path": path} for path in spec["prompts"][name][0][0]]
        chat = processor.apply_chat_template([{"role": "user", "content": content + [
            {"type": "text", "text": spec["question"]}]}], add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt")
        results[name] = {"batch": dict(batch), "logits": logits, "new_tokens": new,
                         "step_logits": torch.stack(out.logits, 1)[0],
                         "answer": processor.decode(new, skip_special_tokens=True).strip(), "one": dict(one),
                         "chat": dict(chat)}
    lm_folder = spec["lm"]
    lm = AutoModelForCausalLM.from_pretrained(lm_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": spec["question"]}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        results["lm"] = {"ids": ids, "logits": lm(ids).logits}
    results["nativevlm_imported"] = sorted(m for m in sys.modules if m.startswith("nativevlm"))
    torch.save(results, spec["out"])
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Our models saved as training saves them, exported, and what transformers makes of the exports."""
    root = tmp_path_factory.mktemp("export_hf")
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (30, 50, 3), dtype=np.uint8)).save(root / "a.png")
    rgba = rng.randint(0, 256, (70, 40, 4), dtype=np.uint8)  # transparent areas: composited on white
    Image.fromarray(rgba, "RGBA").save(root / "b.png")
    tok = Tokenizer.train(CORPUS, vocab_size=300, min_frequency=1)
    vlms, prompts = {}, {}
    for name in MODELS:
        folder = root / name
        build_vlm(tok, name).save_pretrained(folder)
        tok.save(folder)
        export_hf(folder, root / f"{name}-hf")
        vlms[name] = str(root / f"{name}-hf")
        prompts[name] = [([str(root / i) for i in images], r) for images, r in zip(PROMPTS, prompt_rates(name))]
    torch.manual_seed(1)
    lm = LanguageModel(LanguageConfig(vocab_size=tok.vocab_size, hidden_size=48, num_layers=2, num_heads=3,
                                      num_kv_heads=1, intermediate_size=64, qk_norm=True))
    save_language_model(lm, root / "lm")
    tok.save(root / "lm")
    export_hf(root / "lm", root / "lm-hf")
    spec = {"vlms": vlms, "prompts": prompts, "question": QUESTION, "new_tokens": NEW_TOKENS,
            "lm": str(root / "lm-hf"), "out": str(root / "theirs.pt")}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(root / "modules"))
    outside = tmp_path_factory.mktemp("elsewhere")  # cwd outside the repository: no ./nativevlm to find
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], cwd=outside, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return {"root": root, "tok": tok, "theirs": torch.load(root / "theirs.pt")}


def test_the_exported_code_runs_without_nativevlm(exported):
    assert exported["theirs"]["nativevlm_imported"] == []
    for name in MODELS:
        code = "\n".join(p.read_text() for p in (exported["root"] / f"{name}-hf").glob("*.py"))
        assert "nativevlm." not in code.replace("nativevlm export", "")


@pytest.mark.parametrize("name", list(MODELS))
def test_processor_gives_our_input_ids_and_pixel_values(exported, name):
    theirs = exported["theirs"][name]["batch"]
    model, tok, encoded = ours(exported["root"], name)
    batch = prompt_batch(encoded, tok.pad_id)
    assert torch.equal(theirs["input_ids"], batch.input_ids)
    assert torch.equal(theirs["attention_mask"].bool(), batch.attention_mask)
    p = model.config.vision.patch_size
    assert theirs["image_grid_hw"].tolist() == [[x.shape[1] // p, x.shape[2] // p] for x in batch.pixel_values]
    assert theirs["image_downsample"].tolist() == batch.image_downsample
    patches = torch.cat([model.vision.patchify(x[None])[0] for x in batch.pixel_values])
    assert torch.equal(theirs["pixel_values"], patches)


def test_apply_chat_template_with_images_gives_the_processor_output(exported):
    """One call from messages naming image files (transformers opens them) gives what text + images give."""
    theirs = exported["theirs"]["quickstart"]
    assert theirs["chat"].keys() == theirs["one"].keys()
    for key, value in theirs["one"].items():
        assert torch.equal(theirs["chat"][key], value), key


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_equal_ours_on_a_left_padded_multi_image_batch(exported, name):
    model, tok, encoded = ours(exported["root"], name)
    batch = prompt_batch(encoded, tok.pad_id)
    with torch.no_grad():
        logits = model(batch.input_ids, pixel_values=batch.pixel_values, attention_mask=batch.attention_mask,
                       image_downsample=batch.image_downsample).logits
    real = batch.attention_mask
    assert (exported["theirs"][name]["logits"][real] - logits[real]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_generate_gives_our_answer(exported, name):
    """The same tokens as our engine and the same text as `ask`; each decode step's logits (transformers' KV
    cache) equal ours over the whole sequence."""
    root, theirs = exported["root"], exported["theirs"][name]
    model, tok, (enc, _) = ours(root, name)
    engine = Engine(model, tok, max_batch_size=1, max_len=len(enc.input_ids) + NEW_TOKENS)
    features = model.encode_images(enc.pixel_values, enc.image_downsample)  # the engine encodes at the default rate
    request = Request(enc.input_ids, SamplingParams(max_new_tokens=NEW_TOKENS), image_features=features)
    (completion,) = engine.generate([request])
    new = theirs["new_tokens"].tolist()
    assert new[:len(completion.token_ids)] == completion.token_ids
    assert new[len(completion.token_ids):] in ([], [tok.eos_id])
    if name not in RATES:  # `ask` lays images out at the default rate
        assert theirs["answer"] == ask(model, tok, QUESTION, [str(root / i) for i in PROMPTS[0]], NEW_TOKENS)
    sequence = torch.tensor([enc.input_ids + new[:-1]])
    with torch.no_grad():
        logits = model(sequence, pixel_values=enc.pixel_values, image_downsample=enc.image_downsample).logits[0]
    assert (theirs["step_logits"] - logits[len(enc.input_ids) - 1:]).abs().max() <= 1e-5


def test_generation_config_ends_at_im_end_and_never_generates_image_tokens(exported):
    tok = exported["tok"]
    config = json.loads((exported["root"] / "experts-hf" / "generation_config.json").read_text())
    assert config["eos_token_id"] == tok.eos_id and config["pad_token_id"] == tok.pad_id
    assert config["suppress_tokens"] == sorted(tok.image_token_ids().values())


def test_a_dense_language_model_exports_as_a_standard_transformers_folder(exported):
    root, theirs = exported["root"], exported["theirs"]["lm"]
    model, tok = load_model_and_tokenizer(root / "lm")
    enc = encode_sample(Sample(id="q", messages=[{"role": "user", "content": QUESTION}]), tok, None,
                        add_generation_prompt=True)
    assert theirs["ids"][0].tolist() == enc.input_ids
    with torch.no_grad():
        ours = model(torch.tensor([enc.input_ids])).logits
    assert (theirs["logits"] - ours).abs().max() <= 1e-5
    assert not list((root / "lm-hf").glob("*.py"))
    assert json.loads((root / "lm-hf" / "generation_config.json").read_text())["eos_token_id"] == tok.eos_id


def test_a_language_model_with_visual_experts_is_refused(exported, tmp_path):
    from nativevlm.model.loading import write_model

    lm = LanguageModel(LanguageConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                      intermediate_size=48), MoEConfig(modality_experts=True))
    (tmp_path / "lm").mkdir()
    write_model(lm, tmp_path / "lm")
    with pytest.raises(UserError, match="visual experts or sparse MoE"):
        export_hf(tmp_path / "lm", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_convolutional_stem_is_refused(tmp_path):
    vlm = NativeVLM.from_language_model(
        LanguageModel(LanguageConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                     intermediate_size=48)),
        vision=VisionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, stem="conv"),
        image_token_ids={"image_token_id": 5})
    vlm.save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match="convolutional stem"):
        export_hf(tmp_path / "m", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_with_other_image_token_ids_is_refused(exported, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    raw = HFTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=270, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    Tokenizer(raw).save(tmp_path / "tok")  # its image tokens are added after its own vocabulary
    with pytest.raises(CheckpointError, match="image tokens"):
        export_hf(exported["root"] / "quickstart", tmp_path / "out", tokenizer_path=tmp_path / "tok")


def test_cli(exported, tmp_path, capsys):
    assert main(["export", "hf", str(exported["root"] / "experts"), "--out", str(tmp_path / "hf")]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["modality_experts"] is True
    assert main(["export", "hf", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["export", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "hf")]) == 2
    assert "is the model folder itself" in capsys.readouterr().err


def test_the_remote_image_processor_sizes_and_normalises_as_ours(tmp_path):
    """Beyond the images above: elongated, tiny and huge sizes under several budgets, and every image mode."""
    spec = importlib.util.spec_from_file_location("processing_nativevlm", REMOTE / "processing_nativevlm.py")
    remote = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(remote)
    sides = [1, 3, 17, 32, 50, 99, 224, 640, 1000, 4096]
    for budget in [(16, 32, 16, 4096), (8, 16, 4, 64), (14, 56, 1, 256)]:
        for w in sides:
            for h in sides:
                assert remote.fit_size(w, h, *budget) == fit_size(w, h, *budget), (w, h, budget)
    rng = np.random.RandomState(1)
    rgba = Image.fromarray(rng.randint(0, 256, (37, 90, 4), dtype=np.uint8), "RGBA")
    rgba.save(tmp_path / "t.png")
    ip = dict(patch_size=8, factor=16, min_patches=4, max_patches=64)
    theirs, ours = remote.NativeVLMImageProcessor(downsample=2, **ip), ImageProcessor(**ip)
    for image in [rgba, rgba.convert("L"), rgba.convert("P"), rgba.convert("CMYK"), tmp_path / "t.png"]:
        assert torch.equal(theirs.to_tensor(image), ours(image))

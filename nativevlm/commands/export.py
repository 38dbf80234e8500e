"""`nativevlm export hf MODEL --out DIR`: a trained model as a transformers folder (remote code, tokenizer,
processor), loadable without nativevlm installed."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="write a trained model in another library's format")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    hf = formats.add_parser("hf", help="a transformers folder: AutoModelForCausalLM / AutoProcessor with "
                                       "trust_remote_code=True (a dense text LM: a plain Llama / Qwen folder)")
    hf.add_argument("model", help="a model folder written by training or save_pretrained (holds its tokenizer)")
    hf.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    hf.add_argument("--tokenizer", help="tokenizer path, if not stored in the model folder")
    hf.set_defaults(func=run)


def run(args) -> int:
    from ..export.hf import export_hf
    from ..model.vlm import NativeVLM

    model = export_hf(args.model, args.out, args.tokenizer)
    out = repr(str(args.out))
    if isinstance(model, NativeVLM):
        print(f"wrote {args.out}: AutoModelForCausalLM.from_pretrained({out}, trust_remote_code=True) and "
              f"AutoProcessor.from_pretrained({out}, trust_remote_code=True) load it")
    else:
        print(f"wrote {args.out} (a standard Llama / Qwen folder): AutoModelForCausalLM.from_pretrained({out}) "
              f"and AutoTokenizer.from_pretrained({out}) load it")
    return 0

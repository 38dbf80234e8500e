"""`nativevlm data ...`: the built-in visual world and curation."""
from __future__ import annotations


def register(sub) -> None:
    from ..data.curate.cli import register as register_curate
    from ..data.world.cli import register as register_world

    p = sub.add_parser("data", help="generate the built-in visual world; curate datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    register_world(dsub)
    register_curate(dsub, model_judge=_model_judge)


def _model_judge(model_dir: str):
    """The curation judge's scorer backed by a trained model (built here: data does not import inference)."""
    from ..infer.chat import model_logprob_fn

    return model_logprob_fn(model_dir)

"""`nativevlm data ...`: the built-in visual world and curation."""
from __future__ import annotations


def register(sub) -> None:
    from ..data.curate.cli import register as register_curate
    from ..data.world.cli import register as register_world

    p = sub.add_parser("data", help="generate the built-in visual world; curate datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    register_world(dsub)
    register_curate(dsub)

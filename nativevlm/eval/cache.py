"""Evaluation results kept between runs of a study or benchmark script, so a rerun that reuses its trained models
evaluates only what changed. An entry is keyed by what its numbers depend on: the caller's key (the model file and
its time, the questions, the answerer's settings) and the package's source, so a changed engine or scorer is not
read from an old entry. With the source unknown (uncommitted changes to the package, or no git checkout) nothing
is read or written: every call computes.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Callable, Optional

PACKAGE = Path(__file__).resolve().parent.parent


def source_version() -> Optional[str]:
    """The git tree id of the package's committed source; None when it has uncommitted changes or is not in git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PACKAGE.parent), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        tree, dirty = git("rev-parse", f"HEAD:{PACKAGE.name}"), git("status", "--porcelain", "--", PACKAGE.name)
    except (OSError, subprocess.CalledProcessError):
        return None
    return None if dirty or not tree else tree


def cached(folder: Path, key: dict, compute: Callable[[], dict], version: Optional[str] = None) -> dict:
    """`compute()` (a JSON-able dict) once per `key` and package source (`version`, default `source_version()`),
    kept in `folder`/<hash of both>.json beside the key; written whole, then renamed, so a process beside this one
    reads all of an entry or none of it."""
    version = source_version() if version is None else version
    if not version:
        return compute()
    key = {**key, "package": version}
    path = folder / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text())["value"]
    value = compute()
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({**key, "value": value}, indent=1) + "\n")
    partial.replace(path)
    return value

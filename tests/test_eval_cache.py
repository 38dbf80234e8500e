"""The evaluation cache of study and benchmark scripts (`nativevlm.eval.cache`): one computation per key and
package source, none kept when the source is unknown, entries written whole."""
import json

from nativevlm.eval import cache


def test_a_result_is_computed_once_per_key_and_source(tmp_path):
    calls = []

    def compute(value):
        def f():
            calls.append(value)
            return {"accuracy": value}
        return f

    folder = tmp_path / "eval"
    assert cache.cached(folder, {"model": "a"}, compute(0.5), "tree1") == {"accuracy": 0.5}
    assert cache.cached(folder, {"model": "a"}, compute(0.9), "tree1") == {"accuracy": 0.5}  # read, not computed
    assert cache.cached(folder, {"model": "b"}, compute(0.7), "tree1") == {"accuracy": 0.7}  # another model
    assert cache.cached(folder, {"model": "a"}, compute(0.6), "tree2") == {"accuracy": 0.6}  # another engine
    assert calls == [0.5, 0.7, 0.6]
    entries = sorted(folder.iterdir())
    assert len(entries) == 3 and all(p.suffix == ".json" for p in entries)  # no partial file left behind
    assert {json.loads(p.read_text())["package"] for p in entries} == {"tree1", "tree2"}


def test_nothing_is_kept_when_the_source_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "source_version", lambda: None)  # uncommitted changes, or no git checkout
    calls = []
    for _ in range(2):
        assert cache.cached(tmp_path / "eval", {"model": "a"}, lambda: calls.append(1) or {"n": len(calls)}) == \
            {"n": len(calls)}
    assert len(calls) == 2 and not (tmp_path / "eval").exists()


def test_source_version_is_the_package_tree_or_none():
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(cache.PACKAGE.parent), *args], capture_output=True, text=True)

    if git("rev-parse", "HEAD").returncode != 0:  # not a git checkout (an installed package)
        assert cache.source_version() is None
        return
    dirty = git("status", "--porcelain", "--", "nativevlm").stdout.strip()
    expected = None if dirty else git("rev-parse", "HEAD:nativevlm").stdout.strip()
    assert cache.source_version() == expected

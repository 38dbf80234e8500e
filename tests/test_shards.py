"""Sharded data: `nativevlm data shard` round trips any file we read, ranks stream disjoint shards that cover
the dataset, a stream resumes exactly mid-shard (also after SIGKILL, through the trainer), and a Parquet file
in the Hugging Face image layout trains."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_resume import assert_bit_identical, finish, start, wait_for, weights
from trainkit import vlm_recipe, write_recipe

from nativevlm.data.formats import read_samples, shard_file
from nativevlm.data.shards import ShardStream, Shard, iter_items, list_shards
from nativevlm.errors import ConfigError, DataError
from nativevlm.train.data import StageData
from nativevlm.train.recipe import load_recipe


def shard(src: Path, out: Path, size: int) -> Path:
    """The CLI, as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "nativevlm", "data", "shard", str(src), "--out", str(out),
                             "--shard-size", str(size)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def test_llava_json_to_shards_gives_the_same_samples_in_order(train_world, tmp_path):
    out = shard(train_world["captions"], tmp_path / "shards", 5)
    assert [s.n for s in list_shards(out)] == [5, 5, 5, 3]
    want, _ = read_samples(train_world["captions"])
    got, report = read_samples(out)
    assert len(got) == len(want) == report.n_samples == 18
    for a, b in zip(want, got):
        assert (a.id, a.messages) == (b.id, b.messages)
        assert b.images == [Path(p).read_bytes() for p in a.images]
        assert {k: v for k, v in a.meta.items() if k != "source"} == {k: v for k, v in b.meta.items() if k != "source"}


def test_jsonl_with_bad_records_shards_and_reads_back_with_the_same_skips(train_world, tmp_path):
    records = json.loads(Path(train_world["captions"]).read_text())[:4]
    records[1]["image"] = "images/nowhere.png"  # missing: no bytes in the shard, skipped on reading
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    records[2]["image"] = str(tmp_path / "corrupt.png")
    lines = [json.dumps(r) for r in records] + ["{not json"]
    src = Path(train_world["root"]) / f"mixed-{tmp_path.name}.jsonl"
    src.write_text("\n".join(lines) + "\n")
    want, want_report = read_samples(src)
    got, got_report = read_samples(shard(src, tmp_path / "shards", 2))
    assert [s.id for s in got] == [s.id for s in want] == ["0", "3"]
    assert got_report.skipped == want_report.skipped
    assert sorted(got_report.skipped) == ["corrupt image", "malformed json", "missing image"]


def test_shard_command_errors_name_the_input(train_world, tmp_path):
    with pytest.raises(DataError, match="--shard-size"):
        shard_file(train_world["captions"], tmp_path / "a", 0)
    shard_file(train_world["captions"], tmp_path / "b", 10)
    with pytest.raises(DataError, match="already holds shards"):
        shard_file(train_world["captions"], tmp_path / "b", 10)


def test_two_ranks_read_disjoint_shards_whose_union_is_the_dataset(train_world, tmp_path):
    out = shard(train_world["captions"], tmp_path / "shards", 4)  # 5 shards: ranks get 3 and 2
    shards = list_shards(out)
    keys = [item.key for item in iter_items(out)]
    for epoch in range(3):
        seen = []
        for rank in range(2):
            stream = ShardStream(shards, lambda item: item.key, "s", rank, 2, buffer=6)
            mine = stream.shards_of(epoch)
            stream.position = sum(s.n for e in range(epoch) for s in stream.shards_of(e))
            got = [stream.next() for _ in range(sum(s.n for s in mine))]
            assert sorted(got) == sorted(item.key for s in mine for item in iter_items_of(s))
            seen.append(set(got))
        assert not seen[0] & seen[1]
        assert sorted(seen[0] | seen[1]) == sorted(keys)


def iter_items_of(shard: Shard):
    from nativevlm.data.shards import read_shard

    return read_shard(shard)


def test_the_shuffle_is_bounded_by_the_window_and_varies_by_epoch(train_world, tmp_path):
    out = shard(train_world["captions"], tmp_path / "shards", 3)
    shards = list_shards(out)
    stream = ShardStream(shards, lambda item: item.shard.path, "s", buffer=5)  # windows of 2 shards (6 records)
    first = [stream.next() for _ in range(6)]
    assert len(set(first)) == 2  # the first window's records come from its two shards only
    epoch0 = [stream.next() for _ in range(12)]
    keyed = ShardStream(shards, lambda item: item.key, "s", buffer=5)
    order = [keyed.next() for _ in range(36)]
    assert sorted(order[:18]) == sorted(order[18:]) and order[:18] != order[18:]
    assert epoch0  # read on through the epoch boundary without error


def test_a_stream_resumes_exactly_from_any_position(train_world, tmp_path):
    """Also past records its reader skips (here every key ending in 3): they count as consumed."""
    out = shard(train_world["captions"], tmp_path / "shards", 4)
    shards = list_shards(out)

    def read(item):
        return None if item.key.endswith("3") else item.key

    whole = ShardStream(shards, read, "seed", 1, 2, buffer=3)
    reference = [(whole.next(), whole.position) for _ in range(40)]  # several epochs
    assert not any(key.endswith("3") for key, _ in reference)
    for cut in (0, 1, 5, 9, 23):
        resumed = ShardStream(shards, read, "seed", 1, 2, buffer=3)
        resumed.position = reference[cut - 1][1] if cut else 0
        assert [(resumed.next(), resumed.position) for _ in range(40 - cut)] == reference[cut:]


def stage_data(recipe: dict, tmp_path: Path, rank: int, world: int) -> StageData:
    cfg = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    return StageData(cfg.stages[0], collator=lambda samples: [s.id for s in samples], seed="0", rank=rank,
                     world=world, log=lambda *a: None)


def test_ranks_train_on_their_own_shards_and_the_mixture_still_draws_by_weight(train_world, tmp_path):
    out = shard(train_world["captions"], tmp_path / "shards", 3)
    recipe = vlm_recipe(train_world)
    recipe["stages"][0]["data"][0]["path"] = str(out)
    recipe["stages"][0]["batch_size"] = 8
    ranks = [stage_data(recipe, tmp_path, rank, 2) for rank in range(2)]
    captions = {s.id for s in read_samples(train_world["captions"])[0]}
    shards_of = [{item.key.lstrip("0") or "0" for s in data.sources[0].shards_of(0) for item in iter_items_of(s)}
                 for data in ranks]
    drawn = [[i for _ in range(2) for batch in data.next_batches() for i in batch] for data in ranks]
    for rank in range(2):
        images = [i for i in drawn[rank] if i in captions]
        assert images and set(images) <= shards_of[rank]
    assert len(drawn[0]) == len(drawn[1]) == 8  # two global batches of 8, half each


def test_a_folder_without_shards_is_a_config_error(train_world, tmp_path):
    recipe = vlm_recipe(train_world)
    (tmp_path / "empty").mkdir()
    recipe["stages"][0]["data"][0]["path"] = str(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"stages\[0\].data\[0\].path: folder .* holds no shards"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def shard_recipe(train_world: dict, shards: Path) -> dict:
    recipe = vlm_recipe(train_world, checkpoint_every=1, keep_checkpoints=2)
    for stage in recipe["stages"]:
        stage["data"][0].update(path=str(shards), shuffle_buffer=8)
    return recipe


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory, train_world):
    """A run streaming 6-record shards (each step draws ~3 of them, so checkpoints fall mid-shard)."""
    root = tmp_path_factory.mktemp("shard_resume")
    shards = shard(train_world["captions"], root / "shards", 6)
    recipe = write_recipe(root / "recipe.yaml", shard_recipe(train_world, shards))
    finish(start(recipe, root / "reference"))
    return recipe, weights(root / "reference")


def test_killed_mid_shard_resumes_bit_identical(shard_run, tmp_path):
    recipe, reference = shard_run
    out = tmp_path / "run"
    proc = start(recipe, out, pause_at="step-00000004")
    wait_for(lambda: (out / "checkpoints" / ".tmp-step-00000004" / "model.safetensors").exists(), proc)
    proc.kill()
    proc.wait()
    streams = json.loads((out / "checkpoints" / "step-00000003" / "rng-0.json").read_text())["rank"]["streams"]
    assert streams[0] % 6  # the stream stopped inside a shard
    assert "resuming from step-00000003" in finish(start(recipe, out, "--resume"))
    assert_bit_identical(weights(out), reference)


def test_max_steps_mid_shard_then_resume_is_bit_identical(shard_run, tmp_path):
    recipe, reference = shard_run
    out = tmp_path / "run"
    finish(start(recipe, out, "--max-steps", "2"))
    finish(start(recipe, out, "--resume"))
    assert_bit_identical(weights(out), reference)


def test_a_parquet_file_with_image_bytes_reads_and_trains(train_world, tmp_path):
    """The Hugging Face image-dataset layout: an `image` struct column (bytes, path) and `conversations`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nativevlm.train.trainer import train

    records = json.loads(Path(train_world["captions"]).read_text())
    root = Path(train_world["root"])
    table = pa.table({
        "id": [r["id"] for r in records],
        "image": [{"bytes": (root / r["image"]).read_bytes(), "path": Path(r["image"]).name} for r in records],
        "conversations": [r["conversations"] for r in records],
    })
    path = tmp_path / "captions.parquet"
    pq.write_table(table, path, row_group_size=5)
    assert [s.n for s in list_shards(path)] == [5, 5, 5, 3]
    want, got = read_samples(train_world["captions"])[0], read_samples(path)[0]
    assert [(s.id, s.messages) for s in got] == [(s.id, s.messages) for s in want]
    assert [s.images for s in got] == [[Path(p).read_bytes() for p in s.images] for s in want]
    recipe = vlm_recipe(train_world)
    for stage in recipe["stages"]:
        stage["data"] = [{"path": str(path)}]
        stage["steps"] = 2
    result = train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)), tmp_path / "run", log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result.final is not None and result.global_step == 4
    assert all(0 < row["loss"] < 20 for row in rows if "loss" in row)


def test_evaluation_reads_a_shard_folder_as_the_file_it_came_from(train_world, tmp_path):
    from nativevlm.eval.benchmarks import load_benchmark

    out = shard(train_world["val"], tmp_path / "val_shards", 2)
    want, got = load_benchmark(str(train_world["val"])), load_benchmark(str(out))
    assert [(i.id, i.question, i.answer) for i in got.items] == [(i.id, i.question, i.answer) for i in want.items]
    assert [i.images for i in got.items] == [[Path(p).read_bytes() for p in i.images] for i in want.items]

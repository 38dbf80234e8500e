"""Curation on Ray Data keeps exactly the records the single-process curation keeps, bad samples included,
and writes the same report. One local Ray (2 CPUs) for the module."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from nativevlm.data.curate import synthetic
from nativevlm.data.curate.balance import Balance
from nativevlm.data.curate.dedup import Dedup
from nativevlm.data.curate.integrity import ImageIntegrity
from nativevlm.data.curate.judge import ImageTextJudge
from nativevlm.data.curate.run import curate_file
from nativevlm.data.curate.text import TextQuality
from nativevlm.data.formats import read_samples
from nativevlm.data.formats import shard_file
from nativevlm.errors import CurationError

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from nativevlm.data.curate.ray_engine import start

    start(workers=2)
    yield
    ray.shutdown()


def noisy_corpus(root: Path) -> Path:
    """Synthetic scenes with one of every fault the stages catch, and malformed records."""
    path = synthetic.generate(root, 40, seed=5)
    records = json.loads(path.read_text())
    images = root / "images"
    img = Image.open(images / "scene_00000.png")
    shutil.copy(images / "scene_00001.png", images / "copy.png")
    img.resize((95, 95)).resize((96, 96)).save(images / "near.png")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(images / "blank.png")
    (images / "cut.png").write_bytes((images / "scene_00002.png").read_bytes()[:200])
    caption = records[0]["conversations"][1]["value"]
    long = ("A long caption with many distinct words about the scene that repeats here verbatim across two "
            "different images so the text deduplication finds it and drops the later copy.")

    def rec(rid, image, answer, prompt="<image>\nDescribe the image."):
        r = {"id": rid, "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}
        return {**r, "image": image} if image else r

    records += [
        rec("missing", "images/gone.png", caption),
        rec("corrupt", "images/cut.png", caption),
        rec("blank", "images/blank.png", caption),
        rec("copy", "images/copy.png", "Another caption of the copied image."),
        rec("near", "images/near.png", "A caption of the near copy."),
        rec("empty", "images/scene_00003.png", " "),
        rec("loop", "images/scene_00004.png", "red circle " * 20),
        rec("nomarker", "images/scene_00005.png", caption, prompt="Describe the image."),
        rec("long1", "images/scene_00006.png", long),
        rec("long2", "images/scene_00007.png", long),
        rec("long3", "images/scene_00008.png", long + " Indeed."),
        42, {"id": "noconv"},
    ]
    path.write_text(json.dumps(records))
    return path


def stages():
    judge = ImageTextJudge(negatives=16, min_records=8, min_auc=0.0, max_clean_loss=1.0)  # judge, never abstain
    return [ImageIntegrity(), TextQuality(), Dedup(), judge, Balance(buckets=4, total=30)]


def test_ray_curation_keeps_what_single_process_keeps_and_reports_the_same(tmp_path):
    src = noisy_corpus(tmp_path / "corpus")
    shards = tmp_path / "shards"
    shard_file(src, shards, 16)
    local = curate_file(src, tmp_path / "local.json", stages(), report_dir=tmp_path / "local_report")
    on_ray = curate_file(shards, tmp_path / "ray", stages(), report_dir=tmp_path / "ray_report", engine="ray")
    reasons = set(local.drops)
    assert {"load/malformed", "integrity/missing_file", "integrity/corrupt", "integrity/blank", "text/empty_answer",
            "text/repetitive", "text/marker_mismatch", "dedup/image_exact", "dedup/image_near", "dedup/text_exact",
            "dedup/text_near", "balance/subsampled"} <= reasons, reasons
    assert [e.index for e in on_ray.kept] == [e.index for e in local.kept]
    kept_local = json.loads((tmp_path / "local.json").read_text())
    kept_ray, _ = read_samples(tmp_path / "ray")
    assert [s.id for s in kept_ray] == [r["id"] for r in kept_local]
    # a shard names an image by its reference as written; the file reader by its resolved path
    where = str(src.parent) + "/"
    assert [(o.index, o.reason, o.detail, o.scores) for o in on_ray.outcomes] == \
        [(o.index, o.reason, o.detail.replace(where, ""), o.scores) for o in local.outcomes]

    def report(folder: Path) -> dict:
        r = json.loads((folder / "report.json").read_text().replace(where, ""))
        return {k: v for k, v in r.items() if k not in ("input", "stage_seconds")}

    assert report(tmp_path / "ray_report") == report(tmp_path / "local_report")
    assert report(tmp_path / "local_report")["stages"]["judge"]["abstained"] is None


def test_ray_engine_needs_shards_and_strict_names_the_record(tmp_path):
    src = noisy_corpus(tmp_path / "corpus")
    with pytest.raises(CurationError, match="nativevlm data shard"):
        curate_file(src, tmp_path / "out", stages(), engine="ray")
    shard_file(src, tmp_path / "shards", 64)
    with pytest.raises(CurationError, match=r"record #\d+ \(noconv\)"):
        curate_file(tmp_path / "shards", tmp_path / "out", stages()[:1], strict=True, engine="ray")

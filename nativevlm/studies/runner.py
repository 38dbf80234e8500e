"""`nativevlm study run`: prepare the data, train each cell (a recipe plus overrides) into
`OUT/runs/<cell>`, evaluate its final model, and append one row per evaluation point to `OUT/study.csv`.

Every step is resumable, so a study runs in the background and continues after any interruption: the world
and tokenizer are made once; a cell whose rows are in the CSV is skipped; a cell that was cut short
resumes from its newest checkpoint (the trainer's exact resume); a cell that finished but whose rows never
reached the CSV (the driver died) is appended from its `rows.json`. Cells run one after another in this
process (`--launcher local`), or each as an independent job through submitit (`--launcher submitit`: Slurm
on a cluster, its local executor elsewhere); this process only submits, waits, and writes the CSV, so the
CSV has a single writer.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from ..config import ConfigError, read_yaml
from ..data.tokenizer import Tokenizer
from ..data.world import generate_world
from ..data.world.corpus import tokenizer_texts
from ..errors import UserError
from ..eval.benchmarks import load_benchmark
from ..eval.curves import hooks_for
from ..eval.harness import answer_priors, run_benchmark
from ..eval.local import LocalAnswerer
from ..infer.pipelines import ExtractThink, KnownDescriptions
from ..model.loading import load_pretrained
from ..model.vlm import NativeVLM
from ..train.recipe import recipe_from_dict, relocate_paths
from ..train.trainer import samples_seen, train
from .spec import TRUTH, CellSpec, StudySpec, load_study

ROWS = "rows.json"


def cell_recipe(spec: StudySpec, cell: CellSpec, out: Path):
    try:
        data = read_yaml(cell.recipe, "recipe")
    except ConfigError as e:
        raise ConfigError(f"cell {cell.name}: {e}") from None
    shared = [] if cell in spec.prepare else list(spec.set)  # the study's `set` is for its own cells
    overrides = relocate_paths(shared + list(cell.set), out)
    try:
        return recipe_from_dict(relocate_paths(data, out), overrides)
    except ConfigError as e:
        raise ConfigError(f"cell {cell.name} ({cell.recipe}): {e}") from None


def prepare_data(spec: StudySpec, out: Path, log=print) -> None:
    """The world and tokenizer the recipes' `data/` paths name, made once."""
    world = out / "data" / "world"
    if spec.world is not None:
        for split in ("train", "val", "test"):
            n = getattr(spec.world, split)
            if n and not (world / f"{split}_config.json").is_file():
                log(f"world: {n} {split} scenes ({spec.world.preset}) -> {world}")
                generate_world(str(world), n, seed=spec.world.seed, split=split, preset=spec.world.preset)
    tok_dir = out / "data" / "tokenizer"
    if spec.tokenizer is not None and not (tok_dir / "tokenizer.json").is_file():
        if not (world / "train.json").is_file():
            raise ConfigError("tokenizer: trained on the world's text; add a `world:` section to the study")
        Tokenizer.train(tokenizer_texts(world), vocab_size=spec.tokenizer.vocab_size).save(tok_dir)
        log(f"tokenizer: {spec.tokenizer.vocab_size} tokens -> {tok_dir}")


def samples_at(cfg, stage_name: str, stage_step: int) -> int:
    """Training samples seen after `stage_step` steps of stage `stage_name` (batch sizes are global)."""
    names = [stage.name for stage in cfg.stages]
    if stage_name not in names:
        raise AssertionError(f"metrics.jsonl names stage {stage_name!r}, which the recipe doesn't have")
    return samples_seen(cfg.stages, names.index(stage_name), stage_step)


def param_counts(model) -> dict:
    """NaViL's axes: the LLM (text weights, embeddings included) and the vision encoder (0 for a text LM)."""
    counts = model.parameter_counts()
    return {"llm_params": counts["language"], "encoder_params": counts.get("vision", 0)}


def evaluate_final(spec: StudySpec, model, tokenizer_path, out: Path, run_dir: Path) -> dict:
    """Accuracy per kind and category (and visual reliance) of a cell's final model on the study's
    benchmarks, as `acc/<kind>` columns (`<bench>:acc/<kind>` with several benchmarks)."""
    answerer = LocalAnswerer(model, Tokenizer.load(tokenizer_path), spec.eval.batch_size, spec.eval.max_new_tokens)
    return score_answerer(spec, answerer, out, run_dir, spec.eval.visual_reliance)


def score_answerer(spec: StudySpec, answerer, out: Path, run_dir: Path, visual_reliance: bool) -> dict:
    shutil.rmtree(run_dir / "eval", ignore_errors=True)  # answers saved from an earlier final model don't count
    cols = {}
    for bench_spec in relocate_paths(spec.eval.bench, out):
        bench = load_benchmark(bench_spec)
        bench.items = bench.items[:spec.eval.limit] if spec.eval.limit else bench.items
        s = run_benchmark(bench, answerer, run_dir / "eval", visual_reliance=visual_reliance, progress=False).summary()
        prefix = f"{bench.name}:" if len(spec.eval.bench) > 1 else ""
        cols[f"{prefix}acc/all"] = s["accuracy"]
        cols[f"{prefix}parse_failures/all"] = s["parse_failure_rate"]
        for group in ("by_kind", "by_category"):
            cols.update({f"{prefix}acc/{k}": v["accuracy"] for k, v in s[group].items() if k})
        if visual_reliance:
            cols[f"{prefix}reliance/all"] = s["visual_reliance"]["all"]
            for group in ("kind", "category"):
                cols.update({f"{prefix}reliance/{k}": v["reliance"]
                             for k, v in s["visual_reliance"][group].items() if k})
    return cols


def benchmark_priors(study_yaml: Path) -> Optional[dict]:
    """The answer priors (`eval.harness.answer_priors`) of a study's benchmark, read through the study file
    beside its CSV (paths relative to that folder, as `study run` wrote them); None when the study has
    not exactly one benchmark or its data is not there (a CSV copied away from its study folder)."""
    if not study_yaml.is_file():
        return None
    ev = read_yaml(study_yaml, "study file").get("eval") or {}
    bench, limit = ev.get("bench") or [], ev.get("limit") or 0
    if len(bench) != 1:
        return None
    try:
        items = load_benchmark(relocate_paths(bench, study_yaml.parent)[0]).items
    except (UserError, OSError):
        return None
    return answer_priors(items[:limit] if limit else items)


def pair_name(perceiver: str, reasoner: str) -> str:
    return f"{perceiver}+{reasoner}"


def run_pair(spec: StudySpec, perceiver: str, reasoner: str, out: Path, log=print) -> list[dict]:
    """Prism's decoupled evaluation of two trained cells: the perceiver describes, the reasoner answers from
    the description (infer.pipelines.ExtractThink). One row: the pair's accuracies and both sides' sizes."""
    name, t0, ts = pair_name(perceiver, reasoner), time.time(), spec.extract_think

    def load(cell: str):
        final = out / "runs" / cell / "final"
        if not final.is_dir():
            raise ConfigError(f"extract_think pair {name}: cell {cell} has no final model ({final}); train it first")
        return load_pretrained(final), Tokenizer.load(final)

    lm, lm_tok = load(reasoner)
    sizes = {}
    if perceiver == TRUTH:
        describer = KnownDescriptions(relocate_paths([ts.descriptions], out)[0])
    else:
        vlm, vlm_tok = load(perceiver)
        if not isinstance(vlm, NativeVLM):
            raise ConfigError(f"extract_think pair {name}: the perceiver {perceiver} must be a vision-language cell")
        describer = LocalAnswerer(vlm, vlm_tok, spec.eval.batch_size, ts.max_new_tokens)
        counts = vlm.parameter_counts()
        sizes = {"perceiver_llm_params": counts["language"], "encoder_params": counts.get("vision", 0)}
    if isinstance(lm, NativeVLM):
        raise ConfigError(f"extract_think pair {name}: the reasoner {reasoner} must be a language-model cell")
    answerer = ExtractThink(describer, LocalAnswerer(lm, lm_tok, spec.eval.batch_size, spec.eval.max_new_tokens),
                            ts.prompt)
    log(f"--- pair {name}: {perceiver} describes, {reasoner} answers")
    cols = score_answerer(spec, answerer, out, out / "runs" / name, visual_reliance=False)
    return [{"cell": name, "stage": "extract_think", "perceiver": perceiver, "reasoner": reasoner, **sizes,
             "llm_params": lm.parameter_counts()["language"], **cols, "cell_seconds": round(time.time() - t0, 1)}]


def run_cell(study_path: str, name: str, out: str, cwd: str, log=print) -> list[dict]:
    """Train one cell (resuming whatever is there) and return its rows; a job of its own under submitit,
    hence plain arguments and the working directory the study's relative paths are read from."""
    if os.getcwd() != cwd:
        os.chdir(cwd)
    spec, out = load_study(study_path), Path(out)
    prepared = {c.name for c in spec.prepare}
    cell = next(c for c in spec.prepare + spec.all_cells() if c.name == name)
    run_dir = out / "runs" / name
    if (run_dir / ROWS).is_file():
        return json.loads((run_dir / ROWS).read_text())
    t0 = time.time()
    cfg = cell_recipe(spec, cell, out)
    result = train(cfg, run_dir, resume=True, log=log, hooks=hooks_for(cfg, log))
    if name in prepared:
        return []
    base = {"cell": name, **cell.levels, **param_counts(result.model)}
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        # the learning curves' accuracy (held-out subset, logged while training) as val_acc/...; the final
        # model's benchmark accuracy below is acc/..., so neither hides the other on the last row
        extra = {f"val_{k}": v for k, v in m.items() if k.startswith("acc/")}
        if m.get("val_loss") is None and not extra:
            continue
        rows.append({**base, "stage": m["stage"], "step": m["step"],
                     "samples": samples_at(cfg, m["stage"], m["stage_step"]), "val_loss": m.get("val_loss"), **extra})
    if not rows:
        log(f"cell {name}: no evaluation points (no val_data in its stages), so no rows in the study CSV")
    if spec.eval.bench and rows and isinstance(result.model, NativeVLM):  # a text LM cell answers no image questions
        final = evaluate_final(spec, result.model, result.final, out, run_dir)
        rows[-1].update(final)
    for row in rows:  # training + evaluation wall time, for the write-up (of a resumed cell: since its resume)
        row["cell_seconds"] = round(time.time() - t0, 1)
    tmp = run_dir / f".{ROWS}.tmp"
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, run_dir / ROWS)  # the cell is done only once its rows are whole
    return rows


def cells_in_csv(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with path.open(newline="") as f:
        return {row["cell"] for row in csv.DictReader(f)}


def append_rows(path: Path, rows: list[dict]) -> None:
    """Add rows to the CSV; a new column (a later cell's extra accuracy) rewrites it with the union header."""
    old = []
    if path.is_file():
        with path.open(newline="") as f:
            old = list(csv.DictReader(f))
    fields: list[str] = []
    for row in old + rows:
        fields += [k for k in row if k not in fields]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(old + rows)
    os.replace(tmp, path)


def make_executor(spec: StudySpec, out: Path, cluster):
    import submitit  # deferred: optional (the `study` extra), needed by the slurm launcher only

    executor = submitit.AutoExecutor(folder=str(out / "submitit" / "%j"), cluster=cluster)
    try:
        executor.update_parameters(name=f"study-{spec.name or 'cells'}", **spec.slurm)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"slurm: {e}") from None
    return executor


def run_study(study_path, out, launcher: str = "local", cluster=None, log=print) -> Path:
    """Run every cell not yet in `OUT/study.csv`; returns the CSV's path."""
    study_path, out = Path(study_path).resolve(), Path(out).resolve()
    spec = load_study(study_path)
    if launcher not in ("local", "submitit"):
        raise ConfigError(f"--launcher {launcher!r}: choose local or submitit")
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(study_path.read_text())  # the record `study fit` reads `fit:` from
    prepare_data(spec, out, log)
    csv_path, cwd = out / "study.csv", os.getcwd()
    done = cells_in_csv(csv_path)
    prep = [c.name for c in spec.prepare if not (out / "runs" / c.name / "final").is_dir()]
    todo = [c.name for c in spec.all_cells() if c.name not in done]
    log(f"study {spec.name}: {len(spec.all_cells()) - len(todo)} cells done, {len(todo)} to run -> {csv_path}")
    if launcher == "local":
        for name in prep + todo:
            log(f"--- cell {name}")
            rows = run_cell(str(study_path), name, str(out), cwd, log)
            if name in todo:
                append_rows(csv_path, rows)
    else:
        executor = make_executor(spec, out, cluster)

        def submit(name: str):
            return name, executor.submit(run_cell, str(study_path), name, str(out), cwd)

        for name in prep:  # the grid's cells start from these: one at a time, each awaited
            _wait([submit(name)], out, log, lambda rows: None)
        _wait([submit(name) for name in todo], out, log, lambda rows: append_rows(csv_path, rows))
    for perceiver, reasoner in spec.extract_think.pairs:  # small next to training: evaluated here
        if pair_name(perceiver, reasoner) not in cells_in_csv(csv_path):
            append_rows(csv_path, run_pair(spec, perceiver, reasoner, out, log))
    return csv_path


def _wait(jobs: list, out: Path, log, done) -> None:
    """Wait for every job, hand each one's rows to `done` as it is collected; name the failed ones."""
    import submitit  # deferred: optional, as in make_executor

    failed = []
    for name, job in jobs:
        try:
            done(job.result())
            log(f"--- cell {name}: done (job {job.job_id})")
        except submitit.core.utils.FailedJobError as e:
            failed.append(name)
            log(f"--- cell {name}: job {job.job_id} failed: {str(e).strip().splitlines()[-1]}")
    if failed:
        raise ConfigError(f"cells {', '.join(failed)} failed (logs under {out / 'submitit'}); run the same "
                          "command again to resume them")

"""Does a thinking model's chain do the work? Its steps read against the world's rationales. One command:

    python bench/thinking_steps.py --world WORLD --work WORK --out docs/studies/posttraining/thinking/steps \
        --model SFT=PATH --model GSPO-s0=PATH ...

The world's reasoning questions (arithmetic, comparison, multi-step) come with the rationale that answers them
("Count the squares: 0. Count the circles: 1. 0 + 1 = 1."). Each model answers the test split's reasoning
questions thinking (`nativevlm eval --think`, budget 48, as the thinking studies ask them) and its count and
colour questions directly (`--no-think`); evaluations are kept under `--work` and reused. Each thinking reply's
steps are then read against the rationale's, step by step (multiple-choice questions are left out: their
option step is not part of the reasoning):

- **asks the right things**: every perception step names what the rationale's does ("Count the squares",
  "Find the circle", "The leftmost object is"), whatever value it states;
- **sees right**: every perception step is the rationale's, value included;
- **computes right**: the last step of an arithmetic or comparison chain holds on the chain's own numbers
  ("2 + 1 = 3", "0 is not greater than 1");
- **answers its chain**: the answer given is what the chain concludes;
- accuracy overall, and when the chain sees right against when it does not.

Beside them: how often a count step that counts the right thing states the right number, against the same
model's direct answers to the count questions. Writes steps.json and steps.png.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
import subprocess
import sys
from pathlib import Path

STEP = re.compile(r"[^.]+\.")
SUM = re.compile(r"^(\d+) ([+-]) (\d+) = (\d+)\.$")
CMP = re.compile(r"^(\d+) (is greater than|is not greater than) (\d+)\.$")
COUNT = re.compile(r"^(Count [^:]+): (\d+)\.$")
METRICS = ("accuracy", "asks_right", "sees_right", "computes_right", "answers_its_chain")


def steps_of(text: str) -> list[str]:
    """A chain's sentences, whitespace collapsed, without the multiple-choice option step."""
    text = " ".join((text or "").split())
    return [s.strip() for s in STEP.findall(text) if "is option" not in s]


def label(step: str) -> str:
    """What a step is about, without the value it states: the part before ':' or before the first ' is '."""
    if ":" in step:
        return step.split(":", 1)[0]
    return step.split(" is ", 1)[0] if " is " in step else step


def conclusion(step: str) -> str | None:
    """What a chain's last step concludes: the number after '=', yes / no of a comparison, or the value stated."""
    if m := SUM.match(step):
        return m.group(4)
    if m := CMP.match(step):
        return "no" if "not" in m.group(2) else "yes"
    value = step.split(":", 1)[1] if ":" in step else step.split(" is ", 1)[-1]
    return value.strip(" .").split()[-1].lower() if value.strip(" .") else None


def computes(step: str) -> bool:
    if m := SUM.match(step):
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        return (a + b if op == "+" else a - b) == c
    if m := CMP.match(step):
        return (int(m.group(1)) > int(m.group(3))) == ("not" not in m.group(2))
    return False


def read_chain(record: dict, rationale: str) -> dict:
    """One thinking reply read against its rationale."""
    ref = steps_of(rationale.split(" Answer:", 1)[0])
    got = steps_of((record.get("trace") or {}).get("thinking", ""))
    computed = record["category"] in ("arithmetic", "comparison")  # the last step computes, the others perceive
    n_seen = len(ref) - 1 if computed else len(ref)
    seen_ref, seen_got = ref[:n_seen], got[:n_seen]
    asks = len(seen_got) == n_seen and all(label(a) == label(b) for a, b in zip(seen_got, seen_ref))
    out = {"accuracy": record["status"] == "correct", "asks_right": asks,
           "sees_right": asks and seen_got == seen_ref,
           "answers_its_chain": bool(got) and conclusion(got[-1]) == str(record.get("parsed") or "").lower()}
    if computed:
        out["computes_right"] = len(got) > n_seen and computes(got[n_seen])
    counts = [(COUNT.match(a), COUNT.match(b)) for a, b in zip(seen_got, seen_ref)]
    out["counts"] = [(a.group(2) == b.group(2)) for a, b in counts if a and b and a.group(1) == b.group(1)]
    return out


def share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def summarise(chains: list[dict]) -> dict:
    out = {"n": len(chains)}
    for m in METRICS:
        out[m] = share([c[m] for c in chains if m in c])
    out["accuracy_when_sees_right"] = share([c["accuracy"] for c in chains if c["sees_right"]])
    out["accuracy_when_not"] = share([c["accuracy"] for c in chains if not c["sees_right"]])
    counts = [x for c in chains for x in c["counts"]]
    out["count_steps"], out["count_steps_right"] = len(counts), share(counts)
    return out


def collapse(records: list[dict]) -> dict:
    """How much a family's replies are one reply: the share of its most common answer and most common chain,
    beside the share of its most common right answer (the answer prior)."""
    n = len(records)
    answer = Counter(str(r.get("parsed")) for r in records).most_common(1)[0]
    chain = Counter(str((r.get("trace") or {}).get("thinking")) for r in records).most_common(1)[0]
    truth = Counter(str(r["answer"]) for r in records).most_common(1)[0]
    return {"most_common_answer": answer[0], "most_common_answer_share": round(answer[1] / n, 4),
            "most_common_chain": chain[0], "most_common_chain_share": round(chain[1] / n, 4),
            "answer_prior": round(truth[1] / n, 4)}


def evaluate(model: Path, qa: Path, out: Path, *flags: str) -> Path:
    """`nativevlm eval` of `model` on the QA file (resumed if already there); its records."""
    cmd = [sys.executable, "-m", "nativevlm", "eval", str(model), "--bench", f"{qa.stem}=llava:{qa}",
           "--out", str(out), *flags]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out / qa.stem / "records.jsonl"


def split_files(world: Path, work: Path) -> tuple[Path, Path, dict]:
    """The test split's reasoning questions and its count and colour questions, as QA files with absolute image
    paths, and each reasoning question's rationale by id."""
    records = json.loads((world / "test.json").read_text())
    for r in records:
        r["image"] = str((world / r["image"]).resolve())
    work.mkdir(parents=True, exist_ok=True)
    reasoning, direct = work / "reasoning.json", work / "count_color.json"
    reasoning.write_text(json.dumps([r for r in records if r["meta"].get("rationale")]))
    direct.write_text(json.dumps([r for r in records if r["meta"]["family"] in ("count", "color")]))
    return reasoning, direct, {r["id"]: r["meta"]["rationale"] for r in records if r["meta"].get("rationale")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, required=True, help="a world folder with test.json (rationales in meta)")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a model folder (repeat)")
    ap.add_argument("--work", type=Path, required=True, help="where the evaluations are kept (reused)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=int, default=48, help="thinking budget (tokens)")
    args = ap.parse_args(argv)
    reasoning, direct, rationales = split_files(args.world, args.work)
    result = {"world": str(args.world), "budget": args.budget, "models": {}}
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--model {spec!r}: give NAME=PATH")
        model = Path(path).resolve()
        think = evaluate(model, reasoning, args.work / name / "think", "--think", "--thinking-budget", str(args.budget),
                         "--max-new-tokens", str(args.budget + 16))
        plain = evaluate(model, direct, args.work / name / "direct", "--no-think", "--max-new-tokens", "8")
        records = [json.loads(line) for line in think.read_text().splitlines()]
        open_ended = [r for r in records if "\nA. " not in r["question"]]
        chains = [read_chain(r, rationales[r["id"]]) for r in open_ended]
        by_family = {}
        for f in sorted({r["category"] for r in open_ended}):
            rows = [r for r in open_ended if r["category"] == f]
            by_family[f] = {**summarise([c for c, r in zip(chains, open_ended) if r["category"] == f]),
                            **collapse(rows)}
        answers = [json.loads(line) for line in plain.read_text().splitlines()]
        direct_acc = {f: share([a["status"] == "correct" for a in answers if a["category"] == f])
                      for f in ("count", "color")}
        result["models"][name] = {"path": path, "asked": len(records), "multiple_choice_left_out":
                                  len(records) - len(open_ended), "overall": summarise(chains),
                                  "by_family": by_family, "direct": direct_acc,
                                  "examples": [{"question": r["question"], "thinking": r["trace"].get("thinking"),
                                                "answer": r["prediction"], "reference": rationales[r["id"]]}
                                               for r in open_ended[:6]]}
        o = result["models"][name]["overall"]
        print(f"{name}: {o['n']} open reasoning questions, accuracy {o['accuracy']:.3f}; asks right "
              f"{o['asks_right']:.3f}, sees right {o['sees_right']:.3f}, computes right {o['computes_right']:.3f}, "
              f"answers its chain {o['answers_its_chain']:.3f}; count steps right {o['count_steps_right']} "
              f"(direct count answers {direct_acc['count']})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steps.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "steps.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["models"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(names)
    labels = [*METRICS, "count_steps_right", "direct_count"]
    for i, name in enumerate(names):
        o = {**result["models"][name]["overall"], "direct_count": result["models"][name]["direct"]["count"]}
        a.bar([k + i * width for k in range(len(labels))], [100 * (o[m] or 0) for m in labels], width, label=name)
    a.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(labels))])
    a.set_xticklabels(["accuracy", "asks the\nright things", "sees right", "computes\nright",
                       "answers\nits chain", "count steps\nright", "direct answers\nto count questions"],
                      fontsize=9)
    a.set_ylabel("% of open reasoning questions (last two: of steps, of questions)")
    a.set_ylim(0, 100)
    a.legend(fontsize=8)
    a.set_title("Thinking replies read against the world's rationales (test split)")
    families = sorted(result["models"][names[0]]["by_family"])
    for i, name in enumerate(names):
        fam = result["models"][name]["by_family"]
        b.bar([k + i * width for k in range(len(families))],
              [100 * fam[f]["most_common_answer_share"] for f in families], width, label=name)
    for k, f in enumerate(families):
        prior = result["models"][names[0]]["by_family"][f]["answer_prior"]
        b.hlines(100 * prior, k - width / 2, k + width * (len(names) - 0.5), colors="black",
                 label="share of the most common right answer" if k == 0 else None)
    b.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(families))])
    b.set_xticklabels(families, fontsize=9)
    b.set_ylabel("replies giving the family's most common answer (%)")
    b.set_ylim(0, 105)
    b.legend(handles=b.get_legend_handles_labels()[0][:1], fontsize=8, loc="lower right")
    b.set_title("One answer for every question?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""How far apart two students of one recipe land when only the seed differs: the measurement behind the
inheritance verdict's band and correlation threshold (docs/CLAIMS.md, "The verdict's thresholds").

    python bench/seed_spread.py --out runs/seed-spread [--seeds 3] [--only classifier|lm]

For each recipe (the built-in fixtures' own: a KD and an ERM student of ``fixtures/teacher`` on vader-movies, and
a KD student of ``fixtures/lm-teacher`` on shakespeare), it trains ``--seeds`` students that differ only in the seed
(kd-audit's own training recipes) and audits every pair of seeds with kd-audit's own compare, the first seed as
"teacher": the mean entropy shift between them (as a fraction of the recipe teacher's mean entropy) and the
Spearman correlation of their per-example (per-token) entropies; and every seed against the recipe's teacher.
Writes ``OUT/spread.json`` and prints the table. One thread; about 20 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from audit.compare import compare, compare_lm
from audit.recipes.train import train
from audit.recipes.train_lm import train_lm
from audit.settings import CompareSettings, LMTrainSettings, TrainSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CLASSIFIER_RECIPES = {  # fixtures/build.py's students
    "classifier-kd": dict(model="tiny:hidden=64,layers=1", loss="kd", teacher=str(FIXTURES / "teacher"),
                          temperature=2.0, kd_weight=0.5),
    "classifier-ce": dict(model="tiny:hidden=64,layers=1", loss="ce"),
}
CLASSIFIER_TRAINING = dict(data="vader-movies", epochs=3, batch_size=32, lr=1e-3, max_length=48, device="cpu")
LM_RECIPES = {  # fixtures/build_lm.py's student, through kd-audit's LM recipe
    "lm-kd": dict(model="tiny-llama:hidden=32,layers=1", teacher=str(FIXTURES / "lm-teacher"), loss="kd",
                  temperature=2.0, kd_weight=0.5, steps=100, batch_size=8, lr=1e-2, max_length=64,
                  data="shakespeare", device="cpu"),
}
LM_DATA = "shakespeare:test"
LM_AUDIT = dict(limit=20, max_length=128)


def _pair(report: dict) -> dict:
    pair = report["pairs"][0]
    teacher = report["models"][pair["teacher"]]
    return {"entropy_shift": pair["entropy_shift"], "corr_entropy_spearman": pair["corr_entropy_spearman"],
            "first_entropy_mean": teacher["entropy_mean"], "n_clusters": teacher.get("n_sequences", teacher["n"])}


def classifier_spread(out: Path, seeds: list[int]) -> dict:
    settings = CompareSettings(progress=False, cache=False, n_bootstrap=1000)
    data = str(FIXTURES / "vader-movies-test.jsonl")
    result = {}
    for recipe, options in CLASSIFIER_RECIPES.items():
        folders = []
        for seed in seeds:
            folder = out / recipe / f"seed{seed}"
            train(TrainSettings(out=str(folder), seed=seed, **CLASSIFIER_TRAINING, **options), overwrite=False,
                  progress=False)
            folders.append(str(folder))
        teacher = compare(str(FIXTURES / "teacher"), folders, data, settings=settings)
        result[recipe] = {
            "teacher_entropy_mean": teacher["models"]["teacher"]["entropy_mean"],
            "against_teacher": [_pair({"pairs": [p], "models": teacher["models"]}) for p in teacher["pairs"]],
            "between_seeds": [_pair(compare(a, [b], data, names=["a", "b"], settings=settings))
                              for a, b in itertools.combinations(folders, 2)],
        }
    return result


def lm_spread(out: Path, seeds: list[int]) -> dict:
    settings = CompareSettings(progress=False, cache=False, n_bootstrap=1000, **LM_AUDIT)
    result = {}
    for recipe, options in LM_RECIPES.items():
        folders = []
        for seed in seeds:
            folder = out / recipe / f"seed{seed}"
            train_lm(LMTrainSettings(out=str(folder), seed=seed, **options), overwrite=False, progress=False)
            folders.append(str(folder))
        teacher = compare_lm(options["teacher"], folders, LM_DATA, settings=settings)
        first = teacher["pairs"][0]["teacher"]
        result[recipe] = {
            "teacher_entropy_mean": teacher["models"][first]["entropy_mean"],
            "against_teacher": [_pair({"pairs": [p], "models": teacher["models"]}) for p in teacher["pairs"]],
            "between_seeds": [_pair(compare_lm(a, [b], LM_DATA, names=["a", "b"], settings=settings))
                              for a, b in itertools.combinations(folders, 2)],
        }
    return result


def table(result: dict) -> str:
    lines = [f"{'recipe':<15} {'pair':<16} {'shift (nats)':>13} {'|shift|/H_T':>12} {'Spearman':>9}"]
    for recipe, r in result.items():
        for kind in ("between_seeds", "against_teacher"):
            for i, p in enumerate(r[kind]):
                shift, corr = p["entropy_shift"]["value"], p["corr_entropy_spearman"]["value"]
                lines.append(f"{recipe:<15} {kind.replace('_', ' ')[:12] + f' {i}':<16} {shift:>+13.4f} "
                             f"{abs(shift) / r['teacher_entropy_mean']:>12.4f} {corr:>9.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/seed-spread")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=("classifier", "lm"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out, seeds, start = Path(args.out), list(range(args.seeds)), time.perf_counter()
    result = {}
    if args.only != "lm":
        result |= classifier_spread(out, seeds)
    if args.only != "classifier":
        result |= lm_spread(out, seeds)
    result["wall_seconds"] = time.perf_counter() - start
    (out / "spread.json").write_text(json.dumps(result, indent=1))
    print(table({k: v for k, v in result.items() if k != "wall_seconds"}))
    print(f"{result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()

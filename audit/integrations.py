"""kd-audit inside a training run: :class:`KDAuditCallback`, a ``transformers.TrainerCallback`` that audits the
teacher against the model being trained at every evaluation.

With a plain ``transformers.Trainer`` or a TRL trainer (``GKDTrainer``, ``DistillationTrainer``: any subclass of
``Trainer``)::

    from audit.integrations import KDAuditCallback

    trainer = GKDTrainer(model=student, teacher_model=teacher, args=GKDConfig(out, eval_strategy="steps",
                         eval_steps=50, report_to="tensorboard"), train_dataset=train, eval_dataset=dev, ...)
    KDAuditCallback(teacher="teacher/", data="shakespeare:dev", limit=20).attach(trainer)
    trainer.train()

At each evaluation (every ``eval_steps``) the callback runs the token-level audit of ``python -m audit compare``
(:func:`audit.token_audit.audit_tokens`: the same windows, reduction and statistics; the fused reduction on CUDA) of
the teacher against the live model the trainer passes, on the held-out text ``data``, and

- logs ``kd_audit/kl``, ``kd_audit/kl_reverse``, ``kd_audit/entropy_shift``, ``kd_audit/ece``,
  ``kd_audit/agreement`` and ``kd_audit/verdict`` (:func:`audit.report.training.step_metrics`) through the
  trainer's ``log``, so every ``report_to`` integration (TensorBoard, W&B, ...) and ``state.log_history`` get them;
- adds them to the evaluation's metrics (what ``trainer.evaluate()`` returns);
- writes the whole report, with a ``training`` section (step, epoch), to
  ``output_dir/kd_audit/step-NNNNNN.json`` (atomically; ``python -m audit report output_dir`` draws the steps).

``python -m audit train`` (kd-audit's own LM recipe) runs the same audit for its dev evaluation through
:func:`dev_evaluation`, so its ``--out`` folder holds ``kd_audit/step-NNNNNN.json`` too.

A callback cannot reach the trainer's loggers by itself: transformers logs an evaluation's metrics before
``on_evaluate`` runs and hands callbacks no trainer. :meth:`KDAuditCallback.attach` gives it the trainer (as TRL's
own ``LogCompletionsCallback`` takes one); a callback passed as ``callbacks=[...]`` without it still writes the
JSON, the metrics and ``state.log_history``, and warns once that the loggers miss the numbers.

The teacher and the held-out text are loaded once, when the callback is made, so a wrong spec fails before
training starts. The model being trained is audited where and as it is (its device and dtype: the audit never
moves or casts it), in eval mode without gradients, and put back in the mode it was in; its predictions are never
cached (its weights change between evaluations). A trainer's mixed-precision autocast is left out of the audit (see
:func:`_own_forward`), so a step's numbers are those ``compare`` gives on the checkpoint saved at that step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from audit.compare import audit_tokens
from audit.errors import AuditError, warn
from audit.load.causal_lm import CausalLM
from audit.load.data.text import Documents, read_documents
from audit.recipes.train_lm import DEV_BOOTSTRAP
from audit.report.envelope import write_json
from audit.report.training import FOLDER, step_file, step_metrics
from audit.run.adapters import Adapter, CausalLMAdapter, Setup, distinct_names, load_adapter
from audit.run.distributed import process_group
from audit.settings import CompareSettings, LMTrainSettings, unused_compare_options

PREFIX = "kd_audit/"
STUDENT = "student"  # the report's name of the model being trained, unless ``names`` gives one
FOLLOWED = {"device": "the model's device", "dtype": "the model's dtype", "cache": "never cached (its weights change)",
            "kind": "a causal-LM audit"}  # settings the callback takes from the trainer, not from the user


class KDAuditCallback(TrainerCallback):
    """Audit the teacher against the model being trained at every evaluation of a ``transformers.Trainer``.

    Args:
        teacher: the teacher, as ``compare`` takes it: a causal LM's folder, hub id or GGUF file, a top-k logits
            file, a loaded :class:`audit.load.causal_lm.CausalLM`, or a ``transformers`` causal LM (the same object
            a distillation trainer gets; its tokenizer is then the trainer's).
        data: the held-out text: a spec of :func:`audit.load.data.text.read_documents` (``shakespeare:dev``, a
            file or folder, a Hub name) or loaded :class:`audit.load.data.text.Documents`.
        names: the report's names, teacher then student (default: the teacher's, and ``"student"``).
        settings: the compare settings; or pass any of their fields as keywords (``limit``, ``max_length``,
            ``n_bootstrap``, ``split``, ...). ``progress`` defaults to False (the trainer draws its own bar);
            ``device``, ``dtype``, ``cache`` and ``kind`` are not options here (see the module docstring).

    Raises:
        AuditError: an unknown or refused option, bad settings, a teacher or data that cannot be loaded.

    >>> callback = KDAuditCallback("fixtures/lm-teacher", "shakespeare:dev", limit=10, n_bootstrap=200)  # doctest: +SKIP
    >>> callback.attach(trainer)  # doctest: +SKIP
    """

    def __init__(self, teacher: Any, data: str | Documents, *, names: list[str] | None = None,
                 settings: CompareSettings | None = None, **options: Any) -> None:
        self.settings = _settings(settings, options)
        if names is not None and len(names) > 2:
            raise AuditError(f"expected at most 2 names (teacher, then student), got {len(names)}")
        self.names = [*(names or []), None, None][:2]
        self._shared_teacher = isinstance(teacher, torch.nn.Module)  # the trainer's own: never moved or cast
        self.teacher = teacher if self._shared_teacher else load_adapter(teacher, self.names[0], "lm", self.settings,
                                                                         teacher=True)
        self.documents = data if isinstance(data, Documents) else read_documents(
            data, split=self.settings.split, text_column=self.settings.text_column,
            prompt_column=self.settings.prompt_column, completion_column=self.settings.completion_column,
            limit=self.settings.limit)
        self.trainer = None
        self.report: dict | None = None  # the last evaluation's report
        self._audited_step = None
        self._warned = False

    def attach(self, trainer: Any) -> KDAuditCallback:
        """Add this callback to ``trainer`` (unless it is there already) and log through ``trainer.log``."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self.trainer = trainer
        return self

    def audit(self, model: torch.nn.Module, tokenizer: Any = None) -> dict:
        """The token-level compare report (``"kd-audit/compare/2"``) of the teacher against ``model`` now.

        ``model`` runs on its own device and in its own dtype (the teacher is moved to them), in eval mode under
        ``torch.inference_mode``, and is put back in the mode it was in. ``tokenizer`` (the trainer's
        ``processing_class``) is checked against the teacher's vocabulary; without one the teacher's is used.

        Raises:
            AuditError: a model on several devices or in several floating dtypes (the audit would move or cast
                it), a tokenizer other than the teacher's, or anything the audit refuses.
        """
        device, dtype = _placement(model)
        teacher = self._teacher_adapter(tokenizer)
        if self._shared_teacher and _placement(teacher.model.model) != (device, dtype):
            raise AuditError(f"expected the teacher object on the trained model's device and dtype ({device}, "
                             f"{dtype}), got {_placement(teacher.model.model)}; the audit would move or cast the "
                             "trainer's own teacher: pass the teacher's path instead (the callback loads its own copy)")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer) or teacher.model.tokenizer  # a processor's own
        student = CausalLMAdapter(CausalLM(self.names[1] or STUDENT, model, tokenizer,
                                           str(getattr(model.config, "_name_or_path", "")) or "(trained model)"))
        setup = Setup(device, process_group(device), dtype, distinct_names([teacher, student]))
        was_training = model.training
        model.eval()
        try:
            with contextlib.ExitStack() as stack:
                for adapter in setup.models:
                    if isinstance(adapter, CausalLMAdapter):
                        stack.enter_context(_own_forward(adapter.model.model))
                return audit_tokens(setup, self.documents, self.settings)
        finally:
            model.train(was_training)

    def evaluate(self, model: torch.nn.Module, tokenizer: Any = None, *, step: int, epoch: float | None = None,
                 output_dir: str | Path | None = None) -> dict[str, float | str]:
        """One evaluation of a training loop, trainer or not: :meth:`audit` of ``model``, its report written (with
        its ``training`` section) to ``output_dir/kd_audit/step-NNNNNN.json`` when ``output_dir`` is given and kept
        as :attr:`report`, and the ``kd_audit/*`` numbers to log returned (a statistic the report holds as undefined
        is left out)."""
        report = self.audit(model, tokenizer)
        report["training"] = {"step": step, "epoch": epoch}
        if output_dir is not None:
            write_json(report, Path(output_dir) / FOLDER / step_file(step))
        self.report = report
        return {PREFIX + k: v for k, v in step_metrics(report).items() if v is not None}

    def _teacher_adapter(self, tokenizer: Any) -> Adapter:
        """The teacher as an adapter; a ``transformers`` model is wrapped on first use, with ``tokenizer``."""
        if isinstance(self.teacher, torch.nn.Module):
            if tokenizer is None:
                raise AuditError("expected the trainer's processing_class (a tokenizer) for a teacher passed as a "
                                 "model object, got none; pass processing_class to the trainer, or the teacher's "
                                 "path to KDAuditCallback")
            source = str(getattr(self.teacher.config, "_name_or_path", "")) or "(teacher model)"
            self.teacher = CausalLMAdapter(CausalLM(self.names[0] or Path(source).name or "teacher", self.teacher,
                                                    getattr(tokenizer, "tokenizer", tokenizer), source))
        return self.teacher

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if args.eval_strategy == "no":
            warn("KDAuditCallback audits at each evaluation, but the trainer's eval_strategy is 'no'; set "
                 "eval_strategy='steps' and eval_steps to audit during training")

    def on_evaluate(self, args, state, control, model=None, processing_class=None, metrics=None, **kwargs) -> None:
        if state.global_step == self._audited_step:  # one audit per step (an eval_dataset dict evaluates per set)
            return
        if model is None:
            raise AuditError("expected the trainer to pass its model to KDAuditCallback.on_evaluate, got none; use "
                             "the callback with a transformers.Trainer (or a subclass)")
        logs = self.evaluate(model, processing_class, step=state.global_step, epoch=state.epoch,
                             output_dir=args.output_dir if state.is_world_process_zero else None)
        self._audited_step = state.global_step
        if metrics is not None:
            metrics.update(logs)
        if self.trainer is not None:
            self.trainer.log(dict(logs))
            return
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
        if not self._warned:
            self._warned = True
            warn("KDAuditCallback is not attached to its trainer, so report_to loggers do not get kd_audit/* (they "
                 "are in trainer.state.log_history and output_dir/kd_audit); call KDAuditCallback(...).attach(trainer)")


def dev_evaluation(settings: LMTrainSettings, teacher: CausalLM, student: CausalLM, documents: Documents, *,
                   step: int, epoch: float, out: Path | None, progress: bool) -> dict:
    """``audit train``'s dev evaluation (an :class:`audit.recipes.train_lm.DevEvaluation`): a
    :class:`KDAuditCallback` of the loaded ``teacher`` on the dev ``documents`` (the run's window length, its
    seed, :data:`audit.recipes.train_lm.DEV_BOOTSTRAP` resamples, the auditor's other defaults) evaluating the
    trained ``student`` at step ``step``; the step report is written to ``out/kd_audit/step-NNNNNN.json`` (when
    ``out`` is given) and returned."""
    callback = KDAuditCallback(teacher, documents, names=["teacher", "student"], max_length=settings.max_length,
                               n_bootstrap=DEV_BOOTSTRAP, seed=settings.seed, progress=progress)
    callback.evaluate(student.model, student.tokenizer, step=step, epoch=epoch, output_dir=out)
    return callback.report


def _settings(settings: CompareSettings | None, options: dict[str, Any]) -> CompareSettings:
    """The callback's compare settings, from ``settings`` or keyword options (not both), validated.

    Raises:
        AuditError: both given, an unknown field, a field the trainer decides (:data:`FOLLOWED`), bad values.
    """
    if settings is not None and options:
        raise AuditError(f"expected settings or keyword options, got both (settings and {', '.join(options)}); pass "
                         "one of them")
    fields = {f.name for f in dataclasses.fields(CompareSettings)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise AuditError(f"expected options of audit.settings.CompareSettings, got {', '.join(unknown)}; use "
                         f"{', '.join(sorted(fields - set(FOLLOWED)))}")
    settings = settings or CompareSettings(**{"progress": False, **options})
    refused = [f"{name} ({FOLLOWED[name]})" for name in FOLLOWED if getattr(settings, name) != getattr(
        CompareSettings, name)]
    if refused:
        raise AuditError(f"expected no {', '.join(refused)} for KDAuditCallback: the audit follows the trainer's "
                         "model; drop them")
    settings = dataclasses.replace(settings, kind="lm", cache=False)
    settings.validate()
    for unused in unused_compare_options(settings, "lm"):
        warn(f"{unused}; drop it")
    return settings


@contextlib.contextmanager
def _own_forward(model: torch.nn.Module) -> Iterator[None]:
    """``model`` with its own forward while the audit runs, not the mixed-precision wrapper accelerate puts on a
    prepared model (``model.forward`` under autocast, the unwrapped one kept as ``model._original_forward``): under
    autocast the numbers would carry bf16/fp16 rounding (a KL below 0) and differ from ``compare`` of the saved
    checkpoint. The wrapper is put back after."""
    wrapper, original = model.__dict__.get("forward"), model.__dict__.get("_original_forward")
    if wrapper is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapper


def _placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The one device and floating dtype of ``model``'s parameters (what the audit runs it in, unmoved).

    Raises:
        AuditError: parameters on several devices or in several floating dtypes.
    """
    params = list(model.parameters())
    devices = {p.device for p in params}
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if len(devices) != 1 or len(dtypes) != 1:
        raise AuditError(f"expected the model's parameters on one device in one floating dtype, got devices "
                         f"{sorted(map(str, devices))} and dtypes {sorted(map(str, dtypes))}; the audit would move "
                         "or cast the model being trained: audit a model on one device and dtype")
    return devices.pop(), dtypes.pop()

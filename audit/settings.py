"""Every option of compare and train with its default: the one place defaults are written.

The CLI reads its defaults from these dataclasses, and the library validates them here. This module imports
nothing heavy, so the CLI can build its options without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from audit.errors import AuditError

MAX_BINS = 10_000
MAX_BOOTSTRAP = 100_000
LOSSES = ("ce", "ls", "kd")
DIVERGENCES = ("forward-kl", "reverse-kl", "jsd")  # audit.losses.DIVERGENCES, without importing torch
TINY_LM = "tiny-llama"
DEFAULT_MAX_LENGTH = 256  # compare's tokens per example for classifiers, and windows of LMs that state no context


@dataclass(frozen=True)
class VerdictRule:
    """Thresholds of :func:`audit.stats.inheritance.inheritance_verdict`, measured (docs/CLAIMS.md, "The
    verdict's thresholds"): two students of one recipe that differ only in the seed differ in mean entropy by
    up to 9% of the teacher's and correlate per example at 0.755 or more, so a student inside 10% of the
    teacher's entropy whose correlation with the teacher is clearly above 0.75 follows it as closely as the
    recipe reproduces itself; below 10 clusters a 95% bootstrap interval covered its target 87% of the time or less.

    Attributes:
        min_correlation: the per-example Spearman correlation of entropies the student must clearly exceed.
        shift_band: allowed |mean entropy shift| as a fraction of the teacher's mean entropy.
        min_clusters: the fewest bootstrap clusters (examples; sequences in a token audit) that carry a verdict.
    """

    min_correlation: float = 0.75
    shift_band: float = 0.10
    min_clusters: int = 10

    def validate(self) -> None:
        if not -1.0 <= self.min_correlation < 1.0:
            raise AuditError(f"expected --min-correlation in [-1, 1), got {self.min_correlation}; 0.75 is the measured default")
        if not 0.0 < self.shift_band:
            raise AuditError(f"expected --shift-band > 0 (a fraction of the teacher's mean entropy), got {self.shift_band}; "
                             "0.10 is the measured default")
        if self.min_clusters < 2:
            raise AuditError(f"expected --min-clusters >= 2 (a bootstrap needs two clusters to resample), got "
                             f"{self.min_clusters}; 10 is the measured default")


# --verdict-rule: "measured" (the default, from the seed-to-seed spread) or "fixed" (the rule before it was measured:
# +-25% of the teacher's entropy and a correlation above 0.5), kept for comparison
VERDICT_RULES = {"measured": VerdictRule(), "fixed": VerdictRule(min_correlation=0.5, shift_band=0.25)}


@dataclass
class CompareSettings:
    """Every option of a comparison, with its default (the CLI reads these defaults)."""

    split: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    limit: int | None = None
    device: str | None = None
    dtype: str = "auto"
    batch_size: int | str = "auto"
    max_length: int | None = None  # None: DEFAULT_MAX_LENGTH for classifiers, the smallest context of LMs
    n_bins: int = 15
    n_bootstrap: int = 1000
    seed: int = 0
    allow_pickle: bool = False
    trust_remote_code: bool = False
    tokenizer: str | None = None
    allow_missing_weights: bool = False
    kind: str = "auto"  # "classifier", "lm", or "auto" (an LM when the teacher is a causal LM)
    stride: int | None = None  # LM windows: tokens a window advances (default max_length // 2)
    prompt_column: str | None = None  # LM data: score only the completion's tokens
    completion_column: str | None = None
    limit_tokens: int | None = None  # LM: stop after this many scored tokens (whole windows)
    model_cis: bool = False  # a bootstrap CI on every per-model number (all estimators recomputed per resample)
    calibrate: bool = False  # fit a temperature per model on calibration data and report before/after
    calibration_data: str | None = None  # default: the dev split of a built-in data set
    generate: bool = False  # LM: each student completes every prompt; both models are scored on its tokens too
    max_new_tokens: int = 64  # --generate: tokens each completion may have (it stops earlier at EOS)
    temperature: float = 1.0  # --generate: the students' sampling temperature; 0 decodes greedily
    top_p: float = 1.0  # --generate: nucleus sampling's probability mass (1: the whole distribution)
    progress: bool = True
    cache: bool = True
    rule: VerdictRule = field(default_factory=VerdictRule)

    def validate(self) -> None:
        self.rule.validate()
        if self.limit is not None and self.limit < 1:
            raise AuditError(f"expected --limit >= 1, got {self.limit}; omit it to use all examples")
        if not 1 <= self.n_bins <= MAX_BINS:
            raise AuditError(f"expected --bins between 1 and {MAX_BINS}, got {self.n_bins}; 15 is the usual choice")
        if not 1 <= self.n_bootstrap <= MAX_BOOTSTRAP:
            raise AuditError(f"expected --bootstrap between 1 and {MAX_BOOTSTRAP}, got {self.n_bootstrap}; 1000 "
                             "resamples give CIs to about two digits")
        if self.kind not in ("auto", "classifier", "lm"):
            raise AuditError(f"expected --kind auto, classifier or lm, got {self.kind!r}")
        if self.max_length is not None and self.max_length < 1:
            raise AuditError(f"expected --max-length >= 1 (tokens per example), got {self.max_length}; pass e.g. 256")
        if self.limit_tokens is not None and self.limit_tokens < 1:
            raise AuditError(f"expected --limit-tokens >= 1, got {self.limit_tokens}; omit it to use all tokens")
        if self.batch_size != "auto" and int(self.batch_size) < 1:
            raise AuditError(f"expected --batch-size auto or >= 1, got {self.batch_size}")
        self._validate_sampling()

    def _validate_sampling(self) -> None:
        sampling = [flag(name) for name in SAMPLING if given(self, name)]
        if sampling and not self.generate:
            raise AuditError(f"expected {', '.join(sampling)} only with --generate (how the students sample), got "
                             "no --generate; pass --generate to audit the students on their own completions, or drop "
                             f"{', '.join(sampling)}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise AuditError(f"expected --max-new-tokens >= 1, got {self.max_new_tokens!r}; pass the tokens each "
                             "completion may have, e.g. 64")
        if not self.temperature >= 0:
            raise AuditError(f"expected --temperature >= 0 (0: greedy decoding), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise AuditError(f"expected --top-p in (0, 1], got {self.top_p}; 1 samples from the whole distribution")


AUDITS = ("classifier", "logits", "lm")
AUDIT_NAMES = {"classifier": "a classifier audit", "logits": "an audit of saved logits files (no model runs)",
               "lm": "a token audit of causal LMs"}
# The compare options that act in some audits only ("classifier": checkpoints run over text; "logits": every
# model a saved logits file; "lm": causal LMs, token by token). Every other option acts in all three, but for
# --no-progress and --no-cache, which only turn something off and are never a mistake to pass.
OPTION_AUDITS = {
    "text_pair_column": {"classifier", "logits"},
    "label_column": {"classifier", "logits"},
    "id_column": {"classifier", "logits"},
    "allow_pickle": {"classifier", "logits"},
    "tokenizer": {"classifier"},
    "allow_missing_weights": {"classifier"},
    "trust_remote_code": {"classifier", "lm"},
    "device": {"classifier", "lm"},
    "dtype": {"classifier", "lm"},
    "batch_size": {"classifier", "lm"},
    "max_length": {"classifier", "lm"},
    "stride": {"lm"},
    "prompt_column": {"lm"},
    "completion_column": {"lm"},
    "limit_tokens": {"lm"},
}
FLAGS = {"n_bins": "--bins", "n_bootstrap": "--bootstrap"}  # settings named otherwise on the command line
SAMPLING = ("max_new_tokens", "temperature", "top_p")  # how --generate samples: refused without it


def flag(field_name: str) -> str:
    """The command-line option of a settings field."""
    return FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


def given(settings: object, name: str) -> bool:
    """Whether a settings field holds other than its default (what a user passed)."""
    return getattr(settings, name) != getattr(type(settings), name, None)


def unused_compare_options(settings: CompareSettings, audit: str) -> list[str]:
    """The options given that have no effect in ``audit`` (one of :data:`AUDITS`), each with why."""
    unused = [f"{flag(name)} has no effect on {AUDIT_NAMES[audit]}" for name, audits in OPTION_AUDITS.items()
              if audit not in audits and given(settings, name)]
    if settings.calibration_data is not None and not settings.calibrate:
        unused.append("--calibration-data has no effect without --calibrate")
    return unused


def unused_loss_options(settings: TrainSettings | LMTrainSettings) -> list[str]:
    """The training options given that the run's loss (or student kind) never reads, each with why."""
    loss_options = {"label_smoothing": "ls", "temperature": "kd", "kd_weight": "kd"}
    if isinstance(settings, TrainSettings):
        loss_options["teacher"] = "kd"  # an LM student always uses its teacher (tokenizer, dev audit)
    unused = [f"{flag(name)} has no effect with --loss {settings.loss} (only with --loss {loss})"
              for name, loss in loss_options.items() if settings.loss != loss and given(settings, name)]
    if isinstance(settings, LMTrainSettings) and settings.divergence != "jsd" and given(settings, "beta"):
        unused.append(f"--beta has no effect with --divergence {settings.divergence or 'forward-kl'} (only with jsd)")
    if isinstance(settings, LMTrainSettings) and settings.lmbda == 0 and given(settings, "max_new_tokens"):
        unused.append("--max-new-tokens has no effect without --lmbda (only on-policy steps sample)")
    return unused


@dataclass
class TrainSettings:
    """Every option of a training run, with its default (the CLI reads these defaults).

    ``model`` is a Hugging Face folder or hub id, ``minilm-l6`` (the packaged MiniLM-L6 folder), a
    truncated student ``SPEC@layers=k`` (the first k encoder layers), or ``tiny[:hidden=H,layers=L,dropout=P]``
    (a randomly initialised BERT with the MiniLM tokenizer; dropout 0.1 by default).
    """

    data: str
    model: str
    out: str
    loss: str = "ce"
    label_smoothing: float = 0.1
    teacher: str | None = None
    temperature: float = 2.0
    kd_weight: float = 0.5
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float | None = None  # the freshly initialised pooler and classifier; None: the same as lr
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_length: int = 128
    train_split: str = "train"
    eval_split: str = "dev"
    train_limit: int | None = None
    eval_limit: int | None = None
    seed: int = 0
    checkpoint_every: int = 200
    device: str | None = None
    backend: str = "auto"

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise AuditError(f"expected --loss ce, ls or kd, got {self.loss!r}")
        if self.loss == "kd" and not self.teacher:
            raise AuditError("expected --teacher with --loss kd, got none; pass the teacher checkpoint or its logits")
        if not self.temperature > 0:
            raise AuditError(f"expected --temperature > 0, got {self.temperature}")
        if not 0 <= self.label_smoothing < 1:
            raise AuditError(f"expected --label-smoothing in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.kd_weight <= 1:
            raise AuditError(f"expected --kd-weight in [0, 1], got {self.kd_weight}")
        if self.max_length < 2 or (self.train_limit is not None and self.train_limit < 1):
            raise AuditError(f"expected --max-length >= 2 and --train-limit >= 1, got {self.max_length} and "
                             f"{self.train_limit}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise AuditError(f"expected positive --epochs, --batch-size and --lr, got {self.epochs}, "
                             f"{self.batch_size}, {self.lr}")

    def run_key(self) -> dict:
        """What makes two runs the same run (a resumable folder must match it)."""
        key = asdict(self)
        for transient in ("out", "device", "checkpoint_every"):
            key.pop(transient)
        return key




def tiny_lm_sizes(spec: str) -> tuple[int, int]:
    """(hidden, layers) of ``tiny-llama[:hidden=H,layers=L]`` (defaults 64 and 2; H a multiple of 16).

    Raises:
        AuditError: another name, unknown keys, or sizes out of range.

    >>> tiny_lm_sizes("tiny-llama:hidden=32,layers=1")
    (32, 1)
    """
    name, _, options = spec.partition(":")
    try:
        sizes = dict(item.split("=", 1) for item in options.split(",") if item)
        hidden, layers = int(sizes.pop("hidden", 64)), int(sizes.pop("layers", 2))
        if sizes or name != TINY_LM:
            raise ValueError
    except ValueError:
        raise AuditError(f"expected {TINY_LM}[:hidden=H,layers=L], got {spec!r}; e.g. {TINY_LM}:hidden=64,layers=2") from None
    if hidden < 16 or hidden % 16 or layers < 1:
        raise AuditError(f"expected hidden a positive multiple of 16 and layers >= 1, got {spec!r}")
    return hidden, layers


@dataclass
class LMTrainSettings:
    """Every option of a causal-LM training run (:mod:`audit.recipes.train_lm`), with its default.

    ``model`` is a causal LM (Hugging Face folder or hub id, GGUF file), ``SPEC@layers=k`` (its first k decoder
    layers), or ``tiny-llama[:hidden=H,layers=L]`` (a fresh Llama with the teacher's tokenizer). ``teacher`` is
    always needed: it gives KD its targets, the tokenizer every student must share, and the dev audit's
    reference. ``data`` is a text spec of :func:`audit.load.data.text.read_documents` with ``train_split`` and
    ``eval_split``. ``steps`` (when set) replaces ``epochs``. ``stride`` of the training windows defaults to
    ``max_length - 1`` (every token a target once); the dev audit's windows advance by ``max_length // 2``.
    ``prompt_column`` and ``completion_column`` (both or neither) train on the completions' tokens only, as a
    ``messages`` column trains on the assistant turns' (:func:`audit.load.data.text.read_documents`); documents
    shorter than a window are packed into shared windows (:mod:`audit.recipes.train_lm`).
    ``teacher_topk`` (KD only): a top-k logits file (:mod:`audit.reduce.topk`) of the teacher at exactly the training
    windows' scored positions, whose tail-bucket forward KL (:func:`audit.reduce.topk.topk_kd_loss`) replaces running
    the teacher in each step; at temperature 1 only (the file's log-probabilities cannot be re-tempered without
    the tail's shape). ``freeze_embeddings`` trains the decoder layers only: the input embeddings and the output
    head (for ``@layers=k``, the teacher's; one matrix when tied) stay as they start.
    ``lmbda`` (KD on prompt/completion or chat data; GKD's λ): the chance that a step trains on the student's own
    replies (up to ``max_new_tokens`` tokens each) to its documents' prompts instead of the data's
    (:mod:`audit.recipes.train_lm`); 0 is off.
    """

    data: str
    model: str
    out: str
    teacher: str | None = None
    loss: str = "ce"
    divergence: str | None = None  # KD's soft term; None is forward-kl
    beta: float = 0.5
    label_smoothing: float = 0.1
    temperature: float = 2.0
    kd_weight: float = 0.5
    teacher_temperature: float = 1.0  # the teacher's logits are divided by this first (a graded teacher)
    teacher_topk: str | None = None  # KD targets from this top-k logits file (audit.reduce.topk), not the teacher's forward
    freeze_embeddings: bool = False  # the input embeddings and the output head keep their first weights
    lmbda: float = 0.0  # on-policy: the chance a step trains on the student's own samples
    max_new_tokens: int = 32  # tokens of each on-policy sample at most
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_length: int = 64
    stride: int | None = None
    prompt_column: str | None = None  # train on the completion's tokens only
    completion_column: str | None = None
    train_split: str = "train"
    eval_split: str = "dev"
    train_limit: int | None = None  # documents
    eval_limit: int | None = None  # documents
    seed: int = 0
    checkpoint_every: int = 100
    device: str | None = None
    backend: str = "auto"

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise AuditError(f"expected --loss ce, ls or kd, got {self.loss!r}")
        if not self.teacher:
            raise AuditError("expected --teacher for a causal-LM student, got none; pass the teacher (its tokenizer, "
                             "its targets for kd and the dev audit's reference)")
        if self.divergence is not None and self.loss != "kd":
            raise AuditError(f"expected --divergence only with --loss kd, got --divergence {self.divergence} with "
                             f"--loss {self.loss}; drop it or pass --loss kd")
        if self.divergence is not None and self.divergence not in DIVERGENCES:
            raise AuditError(f"expected --divergence in {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if not 0 <= self.beta <= 1:
            raise AuditError(f"expected --beta in [0, 1] (0: forward KL, 1: reverse KL), got {self.beta}")
        if not self.temperature > 0 or not self.teacher_temperature > 0:
            raise AuditError(f"expected --temperature > 0 and a teacher temperature > 0, got {self.temperature} and "
                             f"{self.teacher_temperature}")
        if not 0 <= self.label_smoothing < 1:
            raise AuditError(f"expected --label-smoothing in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.kd_weight <= 1:
            raise AuditError(f"expected --kd-weight in [0, 1], got {self.kd_weight}")
        if self.max_length < 2:
            raise AuditError(f"expected --max-length >= 2 (tokens per window), got {self.max_length}")
        if self.stride is not None and not 1 <= self.stride <= self.max_length - 1:
            raise AuditError(f"expected --stride in [1, {self.max_length - 1}], got {self.stride}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0 or (self.steps is not None and self.steps < 1):
            raise AuditError(f"expected positive --epochs, --steps, --batch-size and --lr, got {self.epochs}, "
                             f"{self.steps}, {self.batch_size}, {self.lr}")
        for option, limit in (("--train-limit", self.train_limit), ("--eval-limit", self.eval_limit)):
            if limit is not None and limit < 1:
                raise AuditError(f"expected {option} >= 1 (documents), got {limit}")
        if self.model.startswith(TINY_LM):
            tiny_lm_sizes(self.model)
        if self.teacher_topk is not None:
            self._validate_topk()
        self._validate_on_policy()

    def _validate_on_policy(self) -> None:
        if not 0 <= self.lmbda <= 1:
            raise AuditError(f"expected --lmbda in [0, 1] (the chance a step trains on the student's own samples), "
                             f"got {self.lmbda}")
        if self.lmbda == 0:
            return
        if self.loss != "kd" or self.teacher_topk is not None:
            got = f"--loss {self.loss}" if self.loss != "kd" else "--teacher-topk"
            raise AuditError(f"expected --lmbda with --loss kd and a teacher that runs (it scores the student's new "
                             f"tokens), got --lmbda {self.lmbda} with {got}; pass --loss kd without --teacher-topk, "
                             "or drop --lmbda")
        if not 1 <= self.max_new_tokens <= self.max_length - 1:
            raise AuditError(f"expected --max-new-tokens in [1, {self.max_length - 1}] (a prompt and its sample fill at "
                             f"most a --max-length window), got {self.max_new_tokens}")

    def _validate_topk(self) -> None:
        if self.loss != "kd":
            raise AuditError(f"expected --teacher-topk only with --loss kd, got --loss {self.loss}; drop it or pass "
                             "--loss kd")
        if self.divergence not in (None, "forward-kl"):
            raise AuditError(f"expected --divergence forward-kl with --teacher-topk, got {self.divergence}; the "
                             "reverse KL's and JSD's tail-bucket error grows with the student's own tail mass, "
                             "which the file does not bound: run the teacher instead (drop --teacher-topk)")
        if self.temperature != 1 or self.teacher_temperature != 1:
            raise AuditError(f"expected --temperature 1 with --teacher-topk, got {self.temperature} (teacher "
                             f"{self.teacher_temperature}); a top-k file holds log-probabilities at T = 1 and "
                             "re-tempering them needs the unseen tail: pass --temperature 1")

    def run_key(self) -> dict:
        """What makes two runs the same run (a resumable folder must match it)."""
        key = asdict(self)
        for transient in ("out", "device", "checkpoint_every"):
            key.pop(transient)
        if self.lmbda == 0:  # off: the key of the same run before on-policy training existed
            key.pop("lmbda")
            key.pop("max_new_tokens")
        return key

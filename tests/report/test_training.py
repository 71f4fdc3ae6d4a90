"""``python -m audit report DIR`` on the step reports of a training run (audit.report.training).

The step reports are real: KDAuditCallback.on_evaluate (with transformers' own TrainingArguments, TrainerState and
TrainerControl) audits the fixture teacher against the fixture student at three "steps", the student's output
scaled differently at each (its final norm's weight times 1.0, 0.6, 1.5) so that the numbers move. Every rendering
is checked against the JSON files as read here with ``json``, not through the module's own readers.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from audit_cli import cli

from audit.errors import AuditWarning
from audit.package import fixtures_path
from audit.report.training import read_training_audits, training_figures

TEACHER = str(fixtures_path() / "lm-teacher")
STUDENT = str(fixtures_path() / "lm-student")
STEPS = {10: 1.0, 20: 0.6, 30: 1.5}  # step: the factor on the student's final norm weight
STUDENT_NAME = "student <s>"  # escaped in the page
EXPECTED = Path(__file__).resolve().parents[1] / "expected"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trainer's output folder holding kd_audit/step-000010.json, -20 and -30."""
    from transformers import AutoModelForCausalLM, TrainerControl, TrainerState, TrainingArguments

    from audit.integrations import KDAuditCallback
    from audit.load.data.text import read_documents

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    text = read_documents("shakespeare:dev", limit=1).texts[0]
    lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 30][:24]
    root = tmp_path_factory.mktemp("training")
    data = root / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": f"{a}\n{b}"}) + "\n" for a, b in zip(lines[::2], lines[1::2])))
    out = root / "out"
    callback = KDAuditCallback(TEACHER, str(data), names=["lm-teacher", STUDENT_NAME], max_length=64, n_bootstrap=50)
    args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[])
    model = AutoModelForCausalLM.from_pretrained(STUDENT, dtype=torch.float32)
    norm = model.model.norm.weight.detach().clone()
    with pytest.warns(AuditWarning, match="not attached"):  # no trainer: the step reports are what is tested
        for step, factor in STEPS.items():
            with torch.no_grad():
                model.model.norm.weight.copy_(norm * factor)
            callback.on_evaluate(args, TrainerState(global_step=step, epoch=step / 30), TrainerControl(), model=model,
                                 metrics={})
    torch.set_num_threads(threads)
    return out


def saved(run: Path) -> list[dict]:
    return [json.loads((run / "kd_audit" / f"step-{step:06d}.json").read_text()) for step in STEPS]


def values(report: dict) -> dict:
    pair = report["pairs"][0]
    return {"kl": pair["kl"]["value"], "kl_reverse": pair["kl_reverse"]["value"],
            "entropy_shift": pair["entropy_shift"]["value"], "ece": report["models"][pair["student"]]["ece"],
            "agreement": pair["agreement"]["value"], "verdict": pair["verdict"]}


def test_the_table_holds_every_step_as_its_report_does(run, capsys):
    code, out, err = cli(capsys, "report", str(run))
    assert code == 0, err
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    expected = [[str(step), f"{v['kl']:.4f}", f"{v['kl_reverse']:.4f}", f"{v['entropy_shift']:+.4f}", f"{v['ece']:.4f}",
                 f"{v['agreement']:.3f}", v["verdict"].replace("_", " ")]
                for step, v in zip(STEPS, map(values, saved(run)))]
    assert rows == expected
    assert len({row[1] for row in rows}) == 3  # the student moved between steps
    assert f"At step 30: {STUDENT_NAME}" in out


def test_the_output_folder_and_its_kd_audit_folder_read_the_same(run):
    reports = read_training_audits(run)
    assert [r["training"]["step"] for r in reports] == list(STEPS)
    assert reports == read_training_audits(run / "kd_audit") == saved(run)


def test_the_figures_draw_each_steps_values_and_intervals(run):
    reports = saved(run)
    figures = training_figures(reports)
    assert list(figures) == ["kl.png", "entropy-shift.png", "ece.png", "agreement.png"]
    for name, statistic in (("kl.png", "kl"), ("entropy-shift.png", "entropy_shift"), ("agreement.png", "agreement")):
        ax = figures[name].axes[0]
        assert list(ax.lines[0].get_xdata()) == list(STEPS)
        assert list(ax.lines[0].get_ydata()) == [r["pairs"][0][statistic]["value"] for r in reports]
        band = ax.collections[0].get_paths()[0].vertices[:, 1]  # the CI band's outline
        cis = [bound for r in reports for bound in r["pairs"][0][statistic]["ci"]]
        assert band.min() == pytest.approx(min(cis)) and band.max() == pytest.approx(max(cis))
    assert list(figures["kl.png"].axes[0].lines[1].get_ydata()) == [r["pairs"][0]["kl_reverse"]["value"]
                                                                   for r in reports]
    ece = figures["ece.png"].axes[0]
    assert list(ece.lines[0].get_ydata()) == [r["models"][STUDENT_NAME]["ece"] for r in reports]
    assert list(ece.lines[1].get_ydata()) == [r["models"]["lm-teacher"]["ece"] for r in reports]
    markers = [line for line in figures["entropy-shift.png"].axes[0].lines if line.get_linestyle() == "None"]
    assert [m.get_label() for m in markers] == list(dict.fromkeys(r["pairs"][0]["verdict"].replace("_", " ")
                                                                  for r in reports))
    assert sum(len(m.get_xdata()) for m in markers) == len(reports)


class Rows(HTMLParser):
    """The cells of every table row of a page, and its tags."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows, self.tags, self._cell = [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_plots_and_the_page_are_written(run, tmp_path, capsys):
    plots, page = tmp_path / "plots", tmp_path / "page.html"
    code, _, err = cli(capsys, "report", str(run), "--plots", str(plots), "--html", str(page))
    assert code == 0, err
    assert sorted(p.name for p in plots.iterdir()) == ["agreement.png", "ece.png", "entropy-shift.png", "kl.png"]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in plots.iterdir())
    text = page.read_text()
    parsed = Rows(text)
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text and STUDENT_NAME not in text
    assert "student &lt;s&gt;" in text
    assert ("meta", {"http-equiv": "Content-Security-Policy",
                     "content": "default-src 'none'; img-src data:; style-src 'unsafe-inline'"}) in parsed.tags
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 4 and all(src.startswith("data:image/png;base64,") for src in images)
    steps = [row for row in parsed.rows if row and row[0] in {str(s) for s in STEPS}]
    assert [row[:2] for row in steps] == [[str(step), f"{values(r)['kl']:.4f}"] for step, r in zip(STEPS, saved(run))]


def test_a_step_report_alone_is_a_compare_report(run, capsys):
    code, out, err = cli(capsys, "report", str(run / "kd_audit" / "step-000020.json"))
    assert code == 0, err
    assert STUDENT_NAME in out


def _copy_step(run: Path, folder: Path, step: int, edit=None) -> None:
    """Step 10's report as step ``step``'s (``edit`` changes it first)."""
    report = json.loads((run / "kd_audit" / "step-000010.json").read_text())
    report["training"]["step"] = step
    if edit is not None:
        edit(report)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"step-{step:06d}.json").write_text(json.dumps(report))


def _rename_student(report: dict) -> None:
    report["models"]["other"] = report["models"].pop(STUDENT_NAME)
    report["pairs"][0]["student"] = "other"


BAD = {
    "an empty folder": (lambda run, d: d.mkdir(), "got none"),
    "unrelated JSON": (lambda run, d: (d.mkdir(), (d / "config.json").write_text('{"a": 1}')), "got none"),
    "unrelated JSON named as a step": (lambda run, d: (d.mkdir(), (d / "step-000001.json").write_text('{"a": 1}')),
                                       "expected a report with schema"),
    "a compare report without its step": (
        lambda run, d: (d.mkdir(), shutil.copy(EXPECTED / "lm-fixture.json", d / "step-000001.json")),
        "at training step 1"),
    "a step other than its name": (lambda run, d: _copy_step(run, d, 11, lambda r: r["training"].update(step=12)),
                                   "at training step 11"),
    "two runs in one folder": (lambda run, d: (_copy_step(run, d, 10), _copy_step(run, d, 20, _rename_student)),
                               "expected the step reports of one run"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_folders_are_one_line_and_nothing_is_written(run, tmp_path, capsys, case):
    make, message = BAD[case]
    folder = tmp_path / "bad"
    make(run, folder)
    plots, page = tmp_path / "plots", tmp_path / "page.html"
    code, out, err = cli(capsys, "report", str(folder), "--plots", str(plots), "--html", str(page))
    assert code == 2 and out == ""
    assert err.startswith("kd-audit: error: ") and err.count("\n") == 1 and message in err, err
    assert not plots.exists() and not page.exists()

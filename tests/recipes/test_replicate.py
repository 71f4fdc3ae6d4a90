"""The replication recipe through the real command, on the tiny profile (the quick profile is `slow`): its output,
refused options, resumption and the scheduler that trains several arms at once. Claim decisions: test_grid.py."""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_stored_reports import differences
from typer.testing import CliRunner

from audit.cli import app
from audit.errors import AuditError
from audit.load.data import load_data
from audit.recipes.grid import CLASSIFIER_GRID
from audit.recipes.replicate import die_with_parent, train_arms
from audit.stats.claims import VERDICTS

EXPECTED = Path(__file__).parents[1] / "expected"


def test_replicate_tiny_profile_end_to_end(tiny_replication):
    out, args, result = tiny_replication
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "kd-audit/recipes/replicate/1"
    assert [a["arm"] for a in summary["arms"]] == [arm.name for arm in CLASSIFIER_GRID.arms]
    assert {c["claim"] for c in summary["claims"]} == {"C1a", "C1b", "C1c", "C2a", "C2b", "X1"}
    assert all(c["verdict"] in VERDICTS and c["delta"] > 0 for c in summary["claims"])
    for arm in summary["arms"]:  # T* per arm, with its CI; one seed: the seed's fit is the arm's
        low, high = arm["temperature"]["ci"]
        assert low <= arm["temperature"]["value"] <= high
        assert arm["per_seed"][0]["temperature"] == pytest.approx(arm["temperature"]["value"], rel=1e-12)
    pairs = CLASSIFIER_GRID.inheritance
    assert set(summary["temperature_inheritance"]["temperature"]) == {n for pair in pairs for n in pair}
    assert "T*" in result.stdout and "X1" in result.stdout
    assert "C2a" in result.stdout and "small-kd" in result.stdout
    compare_report = json.loads((out / "seed0" / "compare-big-erm.json").read_text())
    assert compare_report["schema"] == "kd-audit/compare/1" and "small-kd" in compare_report["models"]
    assert [s["seed"] for s in summary["seed_verdicts"]] == [0]
    # domain shift: every arm audited on vader-tweets' test split, every claim decided there too
    shifted = json.loads((out / "seed0" / "shift-vader-tweets" / "compare-big-erm.json").read_text())
    assert shifted["data"]["n"] == 48 and shifted["data"].get("split", "test") == "test"
    shift = summary["shift"]["vader-tweets"]
    assert set(shift["claim_verdicts"]) == set(summary["claim_verdicts"]) == set(shift["survives"])
    for claim, before in summary["claim_verdicts"].items():
        after = shift["claim_verdicts"][claim]
        assert shift["survives"][claim] == (after == before if before in ("holds", "fails") else None)
    assert "vader-tweets" in result.stdout
    # accuracy at or below vader-tweets' majority class is reported as that, not as untrained
    tweets = load_data("vader-tweets", split="test", limit=shifted["data"]["n"]).labels
    majority = max(tweets.count(c) for c in set(tweets)) / len(tweets)
    assert "untrained_arms" not in shift
    assert shift["at_majority_arms"] == [a["arm"] for a, arm in zip(shift["arms"], CLASSIFIER_GRID.arms, strict=True)
                                         if arm.teacher_temperature == 1.0 and a["accuracy"]["value"] <= majority + 0.01]
    # a second call reuses every run and gives the same numbers
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["claims"] == summary["claims"]


def test_tiny_replication_gives_the_stored_numbers(tiny_replication):
    """Every number (to 1e-6) and verdict of the tiny replication is the one in tests/expected/replicate-tiny.json,
    so that restructuring the recipe cannot move one. Regenerate it only for an intended change of numbers: the
    fixture's summary.json less ``settings.out``."""
    out, _, _ = tiny_replication
    expected = json.loads((EXPECTED / "replicate-tiny.json").read_text())
    found = differences(expected, json.loads((out / "summary.json").read_text()))
    assert not found, f"{len(found)} differences from tests/expected/replicate-tiny.json, e.g.\n" + "\n".join(found[:20])


@pytest.mark.slow
def test_replicate_quick_profile(tmp_path):
    """The quick profile on a real task learns with every arm (the README's table gives its time per task)."""
    result = CliRunner().invoke(app, ["replicate", "--task", "vader-tweets", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["untrained_arms"] == []
    assert min(a["accuracy"]["value"] for a in summary["arms"] if a["teacher_temperature"] == 1.0) > 0.72  # majority 0.706


BAD_REPLICATE = {
    "bootstrap 0": (["--bootstrap", "0"], "--bootstrap"),
    "bootstrap huge": (["--bootstrap", "100000000"], "--bootstrap"),
    "seeds 0": (["--seeds", "0"], "--seeds"),
    "unknown task": (["--task", "vader-films"], "vader-movies"),
    "unknown profile": (["--profile", "huge"], "--profile"),
    "unknown device": (["--device", "tpu"], "device"),
    "unknown eval task": (["--eval-task", "vader-films"], "--task"),
    "eval task with other labels": (["--eval-task", "bbc-news"], "same labels"),
    "all with plots": (["--task", "all", "--plots", "PLOTS"], "--plots"),
    "jobs 0": (["--jobs", "0"], "--jobs >= 1"),
}


def _replicate_cli(args: list[str]):
    base = {"--task": "vader-movies", "--profile": "tiny", "--bootstrap": "50"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    options = [x for key, value in {**base, **given}.items() for x in (key, value)]
    return CliRunner().invoke(app, ["replicate", *options, "--no-progress"])


def _assert_refused(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("kd-audit: error: expected"), result.stderr
    assert message in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("case", list(BAD_REPLICATE))
def test_bad_replicate_input_is_refused_before_anything_is_written(tmp_path, case):
    args, message = BAD_REPLICATE[case]
    out = tmp_path / "rep"
    _assert_refused(_replicate_cli([a.replace("PLOTS", str(tmp_path / "plots")) for a in args] + ["--out", str(out)]),
                    message)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["out", "parent"])
def test_replicate_out_that_is_a_file_is_refused(tmp_path, where):
    existing = tmp_path / "taken"
    existing.write_text("keep me")
    out = existing if where == "out" else existing / "rep"
    _assert_refused(_replicate_cli(["--out", str(out)]), "--out")
    assert existing.read_text() == "keep me" and list(tmp_path.iterdir()) == [existing]


def test_replicate_all_tasks_end_to_end(tmp_path, monkeypatch):
    """--task all on the tiny profile, with the built-in list cut to two tasks to keep it short."""
    from audit.recipes import replicate as module

    two = {name: spec for name, spec in module.builtin_datasets().items() if name in ("vader-movies", "vader-amazon")}
    monkeypatch.setattr(module, "builtin_datasets", lambda: two)
    out = tmp_path / "all"
    result = CliRunner().invoke(app, ["replicate", "--task", "all", "--profile", "tiny", "--out", str(out),
                                      "--bootstrap", "50", "--no-progress"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == ["vader-movies", "vader-amazon"]
    for task in summary["tasks"]:
        per_task = json.loads((out / task / "summary.json").read_text())
        assert per_task["task"] == task
        assert {c: summary["claims"][c]["by_task"][task] for c in per_task["claim_verdicts"]} == per_task["claim_verdicts"]
    assert all(sum(entry["tasks"].values()) == 2 and sum(entry["runs"].values()) == 2
               for entry in summary["claims"].values())
    assert "vader-amazon" in result.stdout and "C2b" in result.stdout
    # the saved summary re-renders through `report`, which refuses figures for it (they are per task)
    shown = CliRunner().invoke(app, ["report", str(out / "summary.json")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "vader-amazon" in shown.stdout and "X1" in shown.stdout
    refused = CliRunner().invoke(app, ["report", str(out / "summary.json"), "--html", str(tmp_path / "r.html")])
    assert refused.exit_code == 2 and "one-task replicate report" in refused.output
    assert not (tmp_path / "r.html").exists()
    broken = {**summary, "claims": {"C1a": {**summary["claims"]["C1a"], "tasks": {"holds": -1}}}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result = CliRunner().invoke(app, ["report", str(tmp_path / "broken.json")])
    assert result.exit_code == 2 and "claims/C1a/tasks/holds" in result.output


def _timed_arm(folder, arm):
    """A stand-in trainer for :func:`train_arms` (top level, so that it pickles into a worker process)."""
    started = time.time()
    if arm.name == "big-erm":
        raise AuditError("expected a trainable arm, got big-erm; this error is the test's")
    time.sleep(0.5)  # 12 arms: 6 s of work, well beyond the gap between the two workers' start-ups
    (folder / f"{arm.name}.json").write_text(json.dumps([started, time.time(), torch.get_num_threads()]))


def test_train_arms_trains_each_arm_after_its_teacher_several_at_once(tmp_path):
    arms = [replace(arm, name=arm.name.replace("big-erm", "teacher")) if "big-erm" in arm.name else arm
            for arm in CLASSIFIER_GRID.arms]
    arms = [replace(arm, teacher=arm.teacher.replace("big-erm", "teacher")) if arm.teacher else arm for arm in arms]
    in_order = []
    train_arms(arms, in_order.append, jobs=1, progress=False)  # one job: in grid order, in this process
    assert in_order == arms
    train_arms(arms, functools.partial(_timed_arm, tmp_path), jobs=2, progress=False)
    runs = {arm.name: json.loads((tmp_path / f"{arm.name}.json").read_text()) for arm in arms}
    for arm in arms:
        if arm.teacher is not None:
            assert runs[arm.name][0] >= runs[arm.teacher][1], f"{arm.name} started before {arm.teacher} ended"
    intervals = sorted((start, end) for start, end, _ in runs.values())
    assert any(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:])), "no two arms overlapped"
    assert {threads for _, _, threads in runs.values()} == {max(1, torch.get_num_threads() // 2)}


def test_train_arms_stops_at_the_first_error_and_trains_no_student_of_it(tmp_path):
    with pytest.raises(AuditError, match="this error is the test's"):
        train_arms(CLASSIFIER_GRID.arms, functools.partial(_timed_arm, tmp_path), jobs=2, progress=False)
    trained = {path.stem for path in tmp_path.glob("*.json")}
    assert not trained & {arm.name for arm in CLASSIFIER_GRID.arms if arm.teacher == "big-erm"}


def test_jobs_under_torchrun_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "rep"
    _assert_refused(_replicate_cli(["--jobs", "2", "--out", str(out)]), "--jobs 1 under torchrun")
    assert not out.exists()


def _children(pid: int) -> dict[int, str]:
    """Every live process descended from ``pid`` (read from /proc): pid -> its command line."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and stat.rpartition(")")[2].split()[0] != "Z":
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child in [c for c, p in parents.items() if p == parent and c not in found]:
            try:
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not yet reaped by whoever adopted it, is not running)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
def test_workers_die_with_a_killed_replication(tmp_path):
    """SIGKILL of ``replicate --jobs 2`` (no handler runs, nothing is shut down) takes its worker processes with it:
    none is left training arms once the parent is gone (issue 26)."""
    out = tmp_path / "rep"
    parent = subprocess.Popen([sys.executable, "-m", "audit", "replicate", "--task", "vader-movies", "--profile", "tiny",
                               "--out", str(out), "--bootstrap", "50", "--jobs", "2", "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("seed0/*/run.json")):  # a worker has claimed an arm's folder: it is training
            assert parent.poll() is None, parent.stderr.read().decode()
            assert time.monotonic() < deadline, "no arm started training within 3 minutes"
            time.sleep(0.2)
        workers = {pid: cmd for pid, cmd in _children(parent.pid).items() if "spawn_main" in cmd}
        assert len(workers) == 2, _children(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        claimed = sorted(out.glob("seed0/*/run.json"))
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [cmd for pid, cmd in workers.items() if _alive(pid)], "workers outlived their parent"
        time.sleep(1)
        assert sorted(out.glob("seed0/*/run.json")) == claimed, "arms were started after the parent died"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # the unfixed recipe's orphans: stop them here, not after the test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _fork(body) -> int:
    """Run ``body`` in a forked child that never returns into pytest; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
@pytest.mark.parametrize("mechanism", ["prctl", "watchdog"])
def test_die_with_parent_whether_the_parent_dies_before_or_after(mechanism):
    """The worker's guard, by the kernel (Linux's prctl) and by the watchdog thread used elsewhere: a process whose
    parent is already gone when it arms the guard exits at once (exit 1, the race prctl alone loses); one whose
    parent is SIGKILLed later dies within a moment."""
    def as_elsewhere() -> None:
        if mechanism == "watchdog":
            sys.platform = "darwin"  # this forked child only

    def orphan() -> None:
        as_elsewhere()
        die_with_parent(os.getpid())  # a pid other than its parent's: its parent "died" before the guard
        os._exit(0)

    _, status = os.waitpid(_fork(orphan), 0)
    assert os.waitstatus_to_exitcode(status) == 1
    read, write = os.pipe()

    def guarded() -> None:
        as_elsewhere()
        die_with_parent(os.getppid(), poll_seconds=0.05)
        os.write(write, f"{os.getpid()}\n".encode())
        time.sleep(60)

    middle = _fork(lambda: _fork(guarded) and time.sleep(60))
    child = int(os.read(read, 64))
    try:
        assert _alive(child)
        os.kill(middle, signal.SIGKILL)
        os.waitpid(middle, 0)
        deadline = time.monotonic() + 3
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child), "the guarded process outlived its parent"
    finally:
        os.close(read)
        os.close(write)
        if _alive(child):
            os.kill(child, signal.SIGKILL)

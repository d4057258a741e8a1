"""Crash safety and exact resume of the ready loop, with real processes killed by SIGKILL."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import DETERMINISTIC, RECIPE

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 40


def _args(folder, out, *extra):
    return [
        f"data.path={folder}",
        f"output_dir={out}",
        "selection.candidate_batch_size=64",
        "selection.keep=16",
        f"train.max_steps={MAX_STEPS}",
        "train.eval_every=10",
        "train.checkpoint_every=7",
        "train.keep_checkpoints=2",
        "train.progress=false",
        "train.threads=1",
        "train.schedule=cosine",
        "reference.epochs=1",
        "model.width=8",
        "model.hidden=32",
        "logging.trackers=[]",
        "logging.trace=true",
        "reference.refresh_at=[0.3]",  # at step 12: a resume must carry the refreshed reference
        "selection.reject_after=2",
        *extra,
    ]


def _command(*args):
    return [sys.executable, "-m", "online_select", "train", str(RECIPE), *args]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_clock(line):
    """Metrics that do not depend on the machine (wall clock, memory): those must match bitwise."""
    return {
        key: value
        for key, value in line.items()
        if key != "wall_s" and not key.startswith(("time/", "sys/")) and not key.endswith(("_ms", "_seconds"))
    }


def _trace_length(path):
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tiny_idx_folder, tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(_command(*_args(tiny_idx_folder, whole, DETERMINISTIC)), env=_env(), check=True, capture_output=True, timeout=600)

    kill_at = random.Random().randint(9, MAX_STEPS - 8)
    crashed = tmp_path / "crashed"
    run = subprocess.Popen(
        _command(*_args(tiny_idx_folder, crashed, DETERMINISTIC)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while (
        _trace_length(crashed / "selection_trace.jsonl") < kill_at
        and run.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.005)
    assert run.poll() is None, f"the run ended before step {kill_at}: {run.stderr.read().decode()[-2000:]}"
    run.send_signal(signal.SIGKILL)
    run.wait()
    run.stderr.close()
    killed_after = _trace_length(crashed / "selection_trace.jsonl")

    resumed = subprocess.run(
        _command(*_args(tiny_idx_folder, crashed, DETERMINISTIC, "train.resume=auto")),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    found = re.search(r"resumed from (\S+) \(step (\d+)\)", resumed.stdout)
    assert found, resumed.stdout
    # The newest complete checkpoint: the last multiple of 7 reached, or the one before if the kill
    # landed while that one was being written.
    step = int(found.group(2))
    assert step % 7 == 0 and killed_after - 14 < step <= killed_after, (step, killed_after)
    assert found.group(1) == str(crashed / "checkpoints" / f"step-{step:08d}")

    expected_trace = (whole / "selection_trace.jsonl").read_text()
    assert (crashed / "selection_trace.jsonl").read_text() == expected_trace, f"killed at step {killed_after}"
    trace = _lines(whole / "selection_trace.jsonl")
    assert [line["step"] for line in trace] == list(range(1, MAX_STEPS + 1))
    metrics_whole = [_without_clock(line) for line in _lines(whole / "metrics.jsonl")]
    metrics_resumed = [_without_clock(line) for line in _lines(crashed / "metrics.jsonl")]
    differing = [
        (whole_line.get("step"), key, whole_line.get(key), resumed_line.get(key))
        for whole_line, resumed_line in zip(metrics_whole, metrics_resumed)
        for key in sorted(set(whole_line) | set(resumed_line))
        if whole_line.get(key) != resumed_line.get(key)
    ]
    assert metrics_resumed == metrics_whole, f"killed at step {killed_after}: (step, key, whole, resumed) {differing}"
    assert [line["step"] for line in metrics_whole] == [0, 10, 12, 20, 30, 40]
    assert metrics_whole[2]["reference/refreshed"] > 0
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["step-00000035", "step-00000040"]


@pytest.mark.filterwarnings("ignore:online_select. resumed with settings other")  # it extends the run on resume
def test_a_crash_while_saving_leaves_the_previous_checkpoint_in_use(tiny_idx_folder, tmp_path, capsys):
    from online_select.cli import main

    out = tmp_path / "run"
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, out, "train.max_steps=14")]) == 0
    # What a kill in the middle of writing step 21 leaves behind: a temporary folder with some files.
    partial = out / "checkpoints" / ".tmp-step-00000021"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 100)
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, out, "train.resume=auto", "train.max_steps=21")]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000014", "step-00000021"]


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tiny_idx_folder, tmp_path, capsys):
    from online_select.cli import main

    def fails(message, argv):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "CheckpointError" in err and "Traceback" not in err, err

    out = tmp_path / "run"
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, out, "train.max_steps=7")]) == 0
    checkpoint = out / "checkpoints" / "step-00000007"
    meta = json.loads((checkpoint / "meta.json").read_text())

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"x")
    fails("not an online_select checkpoint", ["train", str(RECIPE), *_args(tiny_idx_folder, out, f"train.resume={foreign}")])

    model = checkpoint / "model.safetensors"
    model.write_bytes(b"\xff" * meta["files"]["model.safetensors"])  # same size, garbage content
    fails(r"step-00000007 could not be loaded: .*", ["train", str(RECIPE), *_args(tiny_idx_folder, out, "train.resume=auto")])

    meta["world_size"] = 2
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    fails("written by 2 processes but this run has 1", ["train", str(RECIPE), *_args(tiny_idx_folder, out, f"train.resume={checkpoint}")])


def test_plans_resume_exactly_from_a_checkpoint_between_them(tiny_idx_folder, tmp_path):
    from online_select.cli import main

    plan = [
        "selection.plan_steps=4", "train.max_steps=24", "train.checkpoint_every=8", "reference.refresh_at=[0.3]", DETERMINISTIC
    ]
    whole = tmp_path / "whole"
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, whole, *plan)]) == 0
    trace = _lines(whole / "selection_trace.jsonl")
    assert [line["step"] for line in trace] == list(range(4, 25, 4))  # one line per plan
    assert all(line["plan_steps"] == 4 and len(line["ids"]) == 4 * 16 for line in trace)
    metrics = _lines(whole / "metrics.jsonl")
    assert [line["step"] for line in metrics] == [0, 8, 10, 20, 24]  # the refresh at 0.3 moves to its plan's end
    assert metrics[1]["reference/refreshed"] > 0
    evals = [line for line in metrics if "selection/base_noisy_share" in line]
    assert evals and all(line["selection/base_noisy_share"] < 0.6 and line["time/select_ms"] > 0 for line in evals)

    # A run that stopped after step 16's checkpoint resumes from it and ends as the whole run did.
    crashed = tmp_path / "crashed"
    shutil.copytree(whole, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step-00000024")
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, crashed, *plan, "train.resume=auto")]) == 0
    assert (crashed / "selection_trace.jsonl").read_text() == (whole / "selection_trace.jsonl").read_text()
    assert [_without_clock(line) for line in _lines(crashed / "metrics.jsonl")] == [_without_clock(line) for line in metrics]


def test_a_run_resumed_before_its_policy_switch_switches_as_the_whole_run_did(tiny_idx_folder, tmp_path, capsys):
    from online_select.cli import main

    switch = [
        "selection.switch_to=predicted_reducible_loss", "selection.switch_at=0.5", "train.max_steps=24",
        "train.checkpoint_every=8", "train.keep_checkpoints=0", "train.eval_every=8", "logging.log_every=4", DETERMINISTIC,
    ]
    whole = tmp_path / "whole"
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, whole, *switch)]) == 0
    metrics = _lines(whole / "metrics.jsonl")
    switched = {line["step"]: line["selection/switched"] for line in metrics if "selection/switched" in line}
    assert switched[8] == 0.0 and switched[24] == 1.0

    # Stopped after step 8's checkpoint, before the switch at step 12: the resumed run switches there too.
    crashed = tmp_path / "crashed"
    shutil.copytree(whole, crashed)
    for step in (16, 24):
        shutil.rmtree(crashed / "checkpoints" / f"step-{step:08d}")
    assert [p.name for p in (crashed / "checkpoints").iterdir()] == ["step-00000008"]
    moved = ["selection.switch_at=0.75", f"train.resume={crashed / 'checkpoints' / 'step-00000008'}"]
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, tmp_path / "moved", *switch, *moved)]) == 2
    assert "resume with the switch_to and switch_at of the run that saved it" in capsys.readouterr().err
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, crashed, *switch, "train.resume=auto")]) == 0
    assert (crashed / "selection_trace.jsonl").read_text() == (whole / "selection_trace.jsonl").read_text()
    assert [_without_clock(line) for line in _lines(crashed / "metrics.jsonl")] == [_without_clock(line) for line in metrics]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.max_steps=30"], "train.max_steps=30 must be a multiple of selection.plan_steps=4"),
        (["train.checkpoint_every=7"], "train.checkpoint_every=7 must be a multiple"),
        (["selection.plan_steps=0"], "plan_steps must be >= 1"),
    ],
)
def test_plans_that_would_split_a_checkpoint_are_named(tiny_idx_folder, tmp_path, overrides, message):
    from online_select.config import load_config
    from online_select.loop import train

    base = ["selection.plan_steps=4", "train.max_steps=24", "train.checkpoint_every=8"]
    config = load_config(RECIPE, _args(tiny_idx_folder, tmp_path / "run", *base, *overrides))
    with pytest.raises(ValueError, match=re.escape(message)):
        train(config)


def test_a_checkpoint_with_the_telemetry_in_the_shared_file_resumes_it(tiny_idx_folder, tmp_path):
    """Checkpoints written before each process kept its own telemetry hold it in the shared state file."""
    import torch

    from online_select.cli import main

    settings = ["train.max_steps=14", "reference.refresh_at=[]", DETERMINISTIC]
    whole = tmp_path / "whole"
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, whole, *settings)]) == 0
    older = tmp_path / "older"
    shutil.copytree(whole, older)
    shutil.rmtree(older / "checkpoints" / "step-00000014")
    checkpoint = older / "checkpoints" / "step-00000007"
    shared, process = checkpoint / "online_select_state.pt", checkpoint / "online_select_process_0.pt"
    shared_state, process_state = torch.load(shared, weights_only=True), torch.load(process, weights_only=True)
    shared_state["telemetry"] = process_state.pop("telemetry")
    torch.save(shared_state, shared)
    torch.save(process_state, process)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"].update({path.name: path.stat().st_size for path in (shared, process)})
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    assert main(["train", str(RECIPE), *_args(tiny_idx_folder, older, *settings, "train.resume=auto")]) == 0
    resumed, uninterrupted = _lines(older / "metrics.jsonl"), _lines(whole / "metrics.jsonl")
    assert "selection/coverage" in uninterrupted[-1]
    assert [_without_clock(line) for line in resumed] == [_without_clock(line) for line in uninterrupted]

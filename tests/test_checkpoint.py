import json
from pathlib import Path

import numpy as np
import pytest
import torch

from online_select.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)


def _replace_file(checkpoint, name, data: bytes):
    """Swap a file and record its new size in meta.json, as a tampered-with checkpoint would."""
    (checkpoint / name).write_bytes(data)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"][name] = len(data)
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def test_save_load_and_retention(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step, "gen": torch.Generator().get_state()}, {"w": torch.ones(2) * step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020", "step-00000030"]
    state, model_state, step = load_checkpoint(find_latest_checkpoint(tmp_path))
    assert step == 30 and state["step"] == 30 and model_state["w"].tolist() == [30.0, 30.0]


def test_incomplete_checkpoint_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 5, {"a": 1})
    # a crash mid-save leaves a temporary directory, and a half-written final one lacks meta.json
    (tmp_path / ".tmp-step-00000010-123").mkdir()
    (tmp_path / "step-00000010").mkdir()
    assert find_latest_checkpoint(tmp_path).name == "step-00000005"


def test_truncated_file_makes_a_checkpoint_incomplete(tmp_path):
    save_checkpoint(tmp_path, 1, {"a": 1}, {"w": torch.ones(100)})
    newest = save_checkpoint(tmp_path, 2, {"a": 2}, {"w": torch.ones(100)})
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"incomplete: model.safetensors has \d+ bytes, meta.json says"):
        read_meta(newest)
    assert find_latest_checkpoint(tmp_path).name == "step-00000001"


def test_corrupt_and_foreign_checkpoints(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"a": 1})
    _replace_file(path, "state.pt", b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        load_checkpoint(path)
    foreign = tmp_path / "other"
    foreign.mkdir()
    with pytest.raises(CheckpointError, match="not an online_select checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("value", [np.arange(3), Path("runs")], ids=["numpy array", "path"])
def test_a_state_the_loader_would_refuse_is_refused_when_saved(tmp_path, value):
    keeper = save_checkpoint(tmp_path, 1, {"a": 1}, keep=1)
    with pytest.raises(CheckpointError, match=r"cannot be read back with torch.load\(weights_only=True\)"):
        save_checkpoint(tmp_path, 2, {"a": 2, "bad": value}, keep=1)
    # Nothing written, nothing pruned: the last good checkpoint is still the one to resume from.
    assert list_checkpoints(tmp_path) == [keeper] and not list(tmp_path.glob(".tmp-*"))


def test_unsafe_pickle_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"a": 1})

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, path / "evil.pt")
    _replace_file(path, "state.pt", (path / "evil.pt").read_bytes())
    with pytest.raises(CheckpointError, match="unsafe"):
        load_checkpoint(path)


def test_register_selector_rides_along_in_accelerate_save_state(tmp_path):
    from accelerate import Accelerator

    from online_select import OnlineSelector, ReferenceTable, Scorer
    from online_select.checkpoint import register_selector

    def make():
        return OnlineSelector("predicted_loss", keep=4, scorer=Scorer(), reference=ReferenceTable(torch.rand(100)))

    accelerator = Accelerator(cpu=True)
    selector = make()
    register_selector(accelerator, selector)
    for step in range(3):
        selected = selector.select({"x": torch.randn(16, 2), "id": torch.arange(16) + 16 * step})
        selector.observe(selected, torch.rand(4))
    accelerator.save_state(str(tmp_path / "state"))
    expected = [selector.select({"x": torch.randn(16, 2), "id": torch.arange(16)}).indices for _ in range(2)]

    restored = make()
    other = Accelerator(cpu=True)
    register_selector(other, restored)
    other.load_state(str(tmp_path / "state"))
    assert restored.step == 3 and restored.scorer.updates == 3
    assert [restored.select({"x": torch.randn(16, 2), "id": torch.arange(16)}).indices.tolist() for _ in range(2)] == [
        e.tolist() for e in expected
    ]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"selector": Evil()}, tmp_path / "state" / "online_select_selector_state.pt")
    with pytest.raises(CheckpointError, match="corrupt or unsafe"):
        other.load_state(str(tmp_path / "state"))

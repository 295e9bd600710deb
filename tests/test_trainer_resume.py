"""Resuming the built-in trainer on the tiny sd15 model, on the CPU: the state saved with each checkpoint,
the same LoRA after a kill -9 and a resume as without the kill, starting over (and saying why) when the
state is missing, made with other settings or damaged, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.training.builtin import EXIT_STOPPED, STOPPED_MESSAGE, TrainConfig, train
from core.training.tiny import build_tiny_model
from tests.test_trainer import make_dataset

torch.set_num_threads(1)
# One thread in the subprocesses too, so they add up their sums in the same order as this process.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("sd15"), "sd15")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), count=2)  # two pictures: two steps an epoch


def config(model: Path, dataset: Path, output: Path, **overrides) -> TrainConfig:
    values = dict(
        model=model,
        arch="sd15",
        dataset=dataset,
        output=output,
        trigger="mira",
        resolution=64,
        rank=4,
        alpha=2,
        learning_rate=1e-2,
        epochs=4,
        save_every_n_epochs=2,
        shuffle_captions=True,  # so the Python RNG matters as much as torch's
        caption_dropout=0.3,
    )
    return TrainConfig(**(values | overrides))


def run(cfg: TrainConfig) -> list[dict]:
    """Train in this process; returns the events."""
    seen: list[dict] = []
    train(cfg, emit=lambda event, **fields: seen.append({"event": event, **fields}))
    return seen


def start(cfg: TrainConfig, folder: Path) -> subprocess.Popen:
    """Train in a subprocess, as the worker does."""
    path = folder / f"{cfg.output.name}.json"
    path.write_text(cfg.model_dump_json(), encoding="utf-8")
    command = [sys.executable, "-m", "core.training.builtin", "--config", str(path)]
    with (folder / f"{cfg.output.name}.stderr").open("w") as stderr:  # the child keeps its own copy
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=ONE_THREAD)


def lines(process: subprocess.Popen) -> Iterator[dict]:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            yield json.loads(line)


def only(seen: list[dict], event: str) -> list[dict]:
    return [e for e in seen if e["event"] == event]


@pytest.fixture(scope="module")
def saved(sd15: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    """A finished 2-epoch run with batch size 2 (one step an epoch): its state is the one after epoch 1."""
    output = tmp_path_factory.mktemp("saved") / "out"
    cfg = config(sd15, dataset, output, epochs=2, save_every_n_epochs=1, batch_size=2, scheduler="cosine")
    run(cfg)
    return cfg


def resumable(saved: TrainConfig, tmp_path: Path, **overrides) -> TrainConfig:
    """A copy of ``saved``'s output, to resume with ``overrides``."""
    shutil.copytree(saved.output, tmp_path / "out")
    return saved.model_copy(update={"output": tmp_path / "out", "resume": True, **overrides})


def test_a_killed_run_resumes_to_the_same_lora(sd15: Path, dataset: Path, tmp_path: Path) -> None:
    schedule = dict(scheduler="cosine", warmup_ratio=0.25)  # so the schedule's state matters too
    whole = config(sd15, dataset, tmp_path / "whole", **schedule)
    run(whole)
    cut = config(sd15, dataset, tmp_path / "cut", **schedule)
    with start(cut, tmp_path) as process:
        checkpoint = next((e for e in lines(process) if e["event"] == "checkpoint" and e["epoch"] == 2), None)
        process.kill()
    assert checkpoint is not None, (tmp_path / "cut.stderr").read_text()[-2000:]
    assert checkpoint == {
        "event": "checkpoint",
        "path": str(cut.output / "lora-epoch002.safetensors"),
        "epoch": 2,
        "step": 4,
    }

    seen = run(cut.model_copy(update={"resume": True}))
    first = only(seen, "start")[0]
    assert (first["resumed_from_epoch"], first["resumed_step"], first["total_steps"]) == (2, 4, 8)
    assert [e["step"] for e in only(seen, "step")] == [5, 6, 7, 8] and seen[-1]["steps"] == 8
    expected = load_file(str(whole.output / "lora.safetensors"))
    resumed = load_file(str(cut.output / "lora.safetensors"))
    assert expected.keys() == resumed.keys()
    assert all(torch.allclose(expected[k], resumed[k], rtol=1e-5, atol=1e-7) for k in expected)
    before = load_file(str(cut.output / "lora-epoch002.safetensors"))
    assert any(not torch.equal(before[k], resumed[k]) for k in before)  # epochs 3 and 4 did train


def test_the_state_is_saved_whole_beside_the_checkpoint(saved: TrainConfig) -> None:
    assert sorted(p.name for p in saved.output.iterdir()) == ["lora-epoch001.safetensors", "lora.safetensors", "state"]
    state = saved.output / "state"
    assert sorted(p.name for p in state.iterdir()) == ["lora.safetensors", "state.json", "training.pt"]
    info = json.loads((state / "state.json").read_text(encoding="utf-8"))
    assert (info["epoch"], info["step"], info["batch_size"]) == (1, 1, 2)
    assert info["settings"]["rank"] == 4 and info["settings"]["dataset"] == str(saved.dataset.absolute())
    training = torch.load(state / "training.pt", weights_only=True)
    assert set(training) == {"optimizer", "lr_scheduler", "python_rng", "torch_rng", "cuda_rng"}


def test_a_smaller_batch_resumes_at_the_epoch_boundary(saved: TrainConfig, tmp_path: Path) -> None:
    seen = run(resumable(saved, tmp_path, batch_size=1))
    assert {
        "event": "log",
        "message": "The batch size changed from 2 to 1 since the progress was saved, "
        "so training resumes at the start of epoch 2 (step 2).",
    } in seen
    first = only(seen, "start")[0]
    assert (first["resumed_from_epoch"], first["resumed_step"], first["total_steps"]) == (1, 2, 4)
    assert [e["step"] for e in only(seen, "step")] == [3, 4] and seen[-1]["steps"] == 4
    fresh = run(saved.model_copy(update={"output": tmp_path / "fresh", "batch_size": 1}))
    assert [e["lr"] for e in only(seen, "step")] == pytest.approx([e["lr"] for e in only(fresh, "step")][2:])
    assert all(e["seconds_per_step"] > 0 and "vram_gb" not in e for e in only(seen, "step"))


def test_a_crash_between_the_renames_keeps_the_previous_state(saved: TrainConfig, tmp_path: Path) -> None:
    cfg = resumable(saved, tmp_path)
    (cfg.output / "state").rename(cfg.output / ".state.old")
    assert only(run(cfg), "start")[0]["resumed_from_epoch"] == 1


def test_no_state_starts_from_the_beginning(saved: TrainConfig, tmp_path: Path) -> None:
    cfg = resumable(saved, tmp_path)
    (cfg.output / "state").rename(cfg.output / ".state.tmp")  # a save that never finished is never loaded
    seen = run(cfg)
    message = "There is no saved progress to resume from, so training starts from the beginning."
    assert {"event": "log", "message": message} in seen
    assert "resumed_from_epoch" not in only(seen, "start")[0] and only(seen, "step")[0]["step"] == 1


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"rank": 8, "trigger": "Mira"}, "rank was 4, now 8; trigger word was mira, now Mira"),
        ({"epochs": 1}, "it was saved after epoch 1, and this run has only 1"),
    ],
    ids=["rank and trigger", "fewer epochs"],
)
def test_other_settings_start_over(saved: TrainConfig, tmp_path: Path, changes: dict, why: str) -> None:
    seen = run(resumable(saved, tmp_path, **changes))
    message = f"The saved progress was made with different settings ({why}), so training starts over."
    assert {"event": "log", "message": message} in seen
    assert "resumed_from_epoch" not in only(seen, "start")[0] and only(seen, "step")[0]["step"] == 1


@pytest.mark.parametrize("damage", ["garbage training.pt", "truncated lora.safetensors", "no state.json"])
def test_a_damaged_state_starts_over(saved: TrainConfig, tmp_path: Path, damage: str) -> None:
    cfg = resumable(saved, tmp_path)
    state = cfg.output / "state"
    match damage:
        case "garbage training.pt":
            (state / "training.pt").write_bytes(b"not a pickle")
        case "truncated lora.safetensors":
            (state / "lora.safetensors").write_bytes((state / "lora.safetensors").read_bytes()[:100])
        case "no state.json":
            (state / "state.json").unlink()
    seen = run(cfg)
    logs = [e["message"] for e in only(seen, "log")]
    assert any(m.startswith("The saved progress could not be read (") for m in logs), logs
    assert any(m.endswith("), so training starts over.") for m in logs)
    assert "resumed_from_epoch" not in only(seen, "start")[0] and only(seen, "step")[0]["step"] == 1
    assert seen[-1]["event"] == "done"


def test_sigterm_stops_after_the_step_in_progress(sd15: Path, dataset: Path, tmp_path: Path) -> None:
    cfg = config(sd15, dataset, tmp_path / "out", epochs=300, save_every_n_epochs=1)
    with start(cfg, tmp_path) as process:
        seen = lines(process)
        first = next((e for e in seen if e["event"] == "step"), None)
        assert first is not None, (tmp_path / "out.stderr").read_text()[-2000:]
        process.send_signal(signal.SIGTERM)
        rest = list(seen)
    assert process.returncode == EXIT_STOPPED
    stopped = rest[-1]
    assert stopped == {
        "event": "stopped",
        "step": stopped["step"],
        "epoch": stopped["epoch"],
        "message": STOPPED_MESSAGE,
    }
    assert first["step"] <= stopped["step"] < 600 and not only(rest, "done")
    assert first["seconds_per_step"] > 0 and "vram_gb" not in first
    assert not (cfg.output / "lora.safetensors").exists() and not (cfg.output / ".state.tmp").exists()

"""Training: refused behind the gates, a real built-in run on the tiny model to its LoRA, out-of-memory
recovery with a stand-in trainer, cancel, and a run killed mid-way that resumes from its checkpoint.

This machine has no GPU, so Gate 3 fails here. Where a test needs a machine that passes, it records
Gate 3 as passed against this machine's real fingerprint (``machine_passes``): everything after that —
the ledger, the dry run, training — runs for real.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from core.errors import UserError
from core.events import MemorySink, TrainingFinished, TrainingNote, TrainingProgress
from core.grimoire import Project
from core.jobs import Job, run_job
from core.store import open_store
from core.training.execute import THIS_WORKER, alive, train
from tests.conftest import STANDINS, machine_passes, make_project


def test_training_is_refused_while_a_gate_fails_and_nothing_is_launched(cli, tmp_path, painting):
    make_project(cli, tmp_path, painting)
    cli("config", "pots", "--backend", "builtin", "--resolution", "512", "--available", "24")  # real SD 1.5
    cli("env", "pots")  # this machine has no GPU, which a real model needs: Gate 3 fails
    code, _, err = cli("train", "pots", "--yes")
    assert code == 2
    assert "Training can't start: Gate 3 (Environment) is failed" in err and "No NVIDIA GPU" in err
    project = tmp_path / "grimoire" / "training" / "pots"
    assert not (project / "logs" / "train.log").exists() and not (project / "progress.md").exists()


def test_a_changed_caption_after_the_gates_stops_training(cli, ready):
    (ready.dataset_dir / "pot2.txt").write_text("potobj, a teapot seen from above\n")
    code, _, err = cli("train", "pots", "--yes")
    assert code == 2 and "Gate 1 (Dataset) is stale" in err and "check the dataset again" in err
    assert not (ready.root / "logs" / "train.log").exists()


def test_a_real_run_on_the_tiny_model_ends_with_its_lora_and_its_record(cli, ready):
    code, out, err = cli("train", "pots", "--yes")
    assert code == 0, out + err
    assert out.startswith("Ready to train: 10 pictures, Stable Diffusion 1.5, builtin, Quick (12 steps) — about ")
    assert "Checkpoint saved at epoch 5 (loss curve attached)." in out
    assert "Training finished: pots.safetensors is saved in" in out
    lora = load_file(ready.root / "checkpoints" / "pots.safetensors")
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in lora)
    assert (ready.root / "checkpoints" / "pots-epoch005.safetensors").is_file()
    progress = ready.path("progress.md").read_text()
    assert "- **Status**: FINISHED" in progress and "- **Epoch**: 6 of 6" in progress
    assert "- **Step**: 12 of 12" in progress and "pots-epoch005.safetensors" in progress
    assert "- lora.safetensors" not in progress  # the saved training state is no checkpoint
    assert "- **Phase**: training — TRAINED" in ready.path("status.md").read_text()
    assert (ready.root / "eval" / "loss-curve.png").stat().st_size > 0


async def test_the_worker_job_reports_progress_checkpoints_and_the_end(settings, ready):
    sink = MemorySink()
    await run_job(settings, Job(name="train", id="train:pots:1", session="s1", project="pots"), sink.publish)
    progress = [e for e in sink.events if isinstance(e, TrainingProgress)]
    assert progress and progress[-1].done == 6 and progress[-1].total == 6
    assert "loss " in progress[-1].details and "checkpoints: pots-epoch005.safetensors" in progress[-1].details
    notes = [e for e in sink.events if isinstance(e, TrainingNote)]
    assert any(n.ping and n.picture and "epoch 5" in n.text for n in notes)
    finished = sink.events[-1]
    assert isinstance(finished, TrainingFinished) and finished.status == "finished"
    assert Path(finished.lora).is_file() and Path(finished.curve).is_file()

    lora = Path(finished.lora).stat().st_mtime_ns
    again = MemorySink()  # the queue runs the same job again (a retry after its worker died, say)
    await run_job(settings, Job(name="train", id="train:pots:1", session="s1", project="pots"), again.publish)
    assert [e.kind for e in again.events] == ["training_finished"] and again.events[0].status == "finished"
    assert Path(finished.lora).stat().st_mtime_ns == lora and not (ready.root / "earlier-runs").exists()


async def test_a_run_another_process_is_on_is_not_started_twice(settings, ready):
    async with open_store(settings.database_path) as store:
        await store.start_run("pots:1", "pots", "builtin", "x", None, THIS_WORKER)  # this process: alive
        with pytest.raises(UserError, match="pots is already training"):
            await train(settings, ready, store, lambda item: asyncio.sleep(0))
        await store.start_run("pots:1", "pots", "builtin", "x", None, f"{socket.gethostname()}:999999999")
        assert not alive(await store.latest_run("pots"))  # a process that is gone left it behind


async def test_cancel_stops_the_run_at_once_and_says_what_is_kept(settings, ready):
    async with open_store(settings.database_path) as store:

        async def report(item) -> None:
            if getattr(item, "step", 0) >= 1:  # the first progress after a step: the artist presses Cancel
                await store.request_cancel("pots")

        result = await train(settings, ready, store, report)
        assert result.status == "cancelled" and result.lora is None, result.message
        assert "stopped at your request" in result.message and "No checkpoint had been saved yet" in result.message
        assert (await store.latest_run("pots"))["status"] == "cancelled"
    assert '"event": "stopped"' in (ready.root / "logs" / "train.log").read_text()  # it stopped between steps
    assert not (ready.root / "checkpoints" / "pots.safetensors").exists()
    assert "- **Status**: CANCELLED" in ready.path("progress.md").read_text()


def test_cancel_with_nothing_running_says_so(cli, tmp_path, painting):
    make_project(cli, tmp_path, painting)
    code, out, _ = cli("cancel", "pots")
    assert code == 0 and "No training of pots is running" in out


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_run_killed_mid_way_resumes_from_its_checkpoint(cli, settings, ready):
    """The worker and its trainer die (a reboot) after the epoch-5 checkpoint; the next `train` resumes."""
    env = {**os.environ, "LORATRAIN_GRIMOIRE": str(settings.grimoire)}
    command = [sys.executable, "-m", "core.cli", "train", "pots", "--yes"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = ready.root / "checkpoints" / "state"
    deadline = time.monotonic() + 120
    while not state.is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state.is_dir(), "no checkpoint state appeared"
    assert first.poll() is None, "the run finished before it could be killed"
    for pid in [*_children(first.pid), first.pid]:  # the trainer runs in its own session; a reboot takes it too
        os.kill(pid, signal.SIGKILL)
    first.wait()

    code, out, err = cli("train", "pots", "--yes")
    assert code == 0, out + err
    assert "Picking up where the last run stopped" in out and "pots-epoch005.safetensors" in out
    assert "Training finished" in out
    log = (ready.root / "logs" / "train.log").read_text()
    assert '"resumed_from_epoch": 5' in log
    assert "- **Epoch**: 6 of 6" in ready.path("progress.md").read_text()


@pytest.fixture
def standin(cli, settings, tmp_path, painting, monkeypatch) -> Path:
    """A project for a stand-in ai-toolkit that runs out of memory above batch 1 when told to; returns the
    file where each of its runs notes its batch size and steps."""
    monkeypatch.setenv("LORATRAIN_AI_TOOLKIT_DIR", str(STANDINS / "ai-toolkit"))
    seen = tmp_path / "batches.txt"
    monkeypatch.setenv("STANDIN_STEPS_SEEN", str(seen))
    make_project(cli, tmp_path, painting)
    code, _, err = cli("config", "pots", "--backend", "ai-toolkit", "--model", "/models/sd15.safetensors",
                       "--resolution", "512", "--available", "24", "--batch", "4", "--preset", "quick")  # fmt: skip
    assert code == 0, err
    machine_passes(settings)
    return seen


def batches(seen: Path) -> list[tuple[int, int]]:
    return [(int(b), int(s)) for b, s in (line.split() for line in seen.read_text().splitlines())]


@pytest.mark.parametrize("signature", ["cuda", "cuda-old", "skips", "killed"])
def test_out_of_memory_in_the_dry_run_halves_the_batch_and_retries(cli, standin, monkeypatch, signature):
    monkeypatch.setenv("STANDIN_OOM", signature)
    code, out, err = cli("dryrun", "pots")
    assert "Hit the memory limit — reducing batch size from 4 to 2 and retrying." in out and "from 2 to 1" in out
    assert "Dry run passed — model loaded, 3 steps completed, no errors." in out, out + err
    assert [b for b, _ in batches(standin)] == [4, 2, 1]


def test_out_of_memory_in_training_keeps_the_amount_of_training(cli, settings, standin, monkeypatch):
    assert "Dry run passed" in cli("dryrun", "pots")[1]
    standin.unlink()
    monkeypatch.setenv("STANDIN_OOM", "cuda")
    code, out, err = cli("train", "pots", "--yes")
    assert code == 0, out + err
    assert "Hit the memory limit — reducing batch size from 4 to 2 and retrying." in out
    assert "Training finished: pots.safetensors" in out
    runs = batches(standin)
    assert [b for b, _ in runs] == [4, 2, 1] and runs[2][1] == 4 * runs[0][1]  # a quarter the batch, 4× the steps
    assert "Hit the memory limit" in Project.existing(settings, "pots").path("progress.md").read_text()


def test_out_of_memory_with_no_retries_left_is_diagnosed(cli, standin, monkeypatch):
    monkeypatch.setenv("STANDIN_OOM", "cuda")
    monkeypatch.setattr("core.training.retries.RETRIES_ON_OOM", 0)
    _, out, _ = cli("dryrun", "pots")
    assert "Dry run failed — It ran out of memory at batch size 4." in out and "gradient checkpointing" in out

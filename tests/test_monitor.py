"""The training monitor: each backend's documented output becomes the right signals and final state,
anomalies on loss series, exit codes, the loss curve picture and the ``monitor`` command."""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.errors import UserError
from core.training.losscurve import draw
from core.training.monitor import (
    Anomaly,
    Checkpoint,
    EpochEnd,
    Failure,
    Finished,
    Header,
    Monitor,
    OutOfMemory,
    Step,
    Stopped,
    detect_anomalies,
    parse_line,
)
from core.training.monitor_commands import cmd_monitor

LOGS = Path(__file__).parent / "data" / "logs"
FIXTURES = [
    ("kohya.log", "kohya", 10),
    ("kohya-oom.log", "kohya", 10),
    ("kohya-oom-old.log", "kohya", 10),
    ("kohya-nodata.log", "kohya", 10),
    ("simpletuner.log", "simpletuner", 5),
    ("ai-toolkit.log", "ai-toolkit", 4),
    ("builtin.jsonl", "builtin", 3),
]


def read(name: str, backend: str, epochs: int) -> tuple[Monitor, list]:
    monitor = Monitor(backend, epochs=epochs)
    return monitor, monitor.feed((LOGS / name).read_text(encoding="utf-8")) + monitor.close()


def of(kind: type, signals: list) -> list:
    return [s for s in signals if isinstance(s, kind)]


def state(monitor: Monitor) -> dict:
    return {k: v for k, v in vars(monitor).items() if not k.startswith("_")}


def test_the_monitor_stays_light():
    """The bot and the CLI import it: no torch, and nothing of Discord or arq."""
    code = "import sys, core.training.monitor; print(sorted({'torch', 'discord', 'arq'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=LOGS.parents[2])
    assert out.stdout.strip() == "[]"


# --- kohya ------------------------------------------------------------------------------------------


def test_kohya_run_is_followed_to_the_end():
    monitor, signals = read("kohya.log", "kohya", 10)
    assert (monitor.status, monitor.epoch, monitor.epochs, monitor.step, monitor.total_steps) == (
        "finished",
        10,
        10,
        40,
        40,
    )
    # Each step's loss is its last redrawn frame's avr_loss (the first frame still shows the previous one).
    text = (LOGS / "kohya.log").read_text(encoding="utf-8")
    last_frame = {int(s): float(v) for s, v in re.findall(r"\| (\d+)/40 \[[^\]]*avr_loss=([\d.]+)\]", text)}
    assert monitor.losses == [last_frame[s] for s in range(1, 41)]
    assert (monitor.first_loss, monitor.last_loss) == (last_frame[1], last_frame[40])
    assert monitor.seconds_per_step == pytest.approx(1 / 1.45)
    assert monitor.remaining_s() == 0
    ends = of(EpochEnd, signals)
    assert [e.epoch for e in ends] == list(range(1, 11))
    for e in ends:
        assert e.epochs == 10
        assert e.loss == pytest.approx(sum(monitor.losses[(e.epoch - 1) * 4 : e.epoch * 4]) / 4)
        assert monitor.epoch_losses[e.epoch] == e.loss
    assert [(c.epoch, c.step) for c in monitor.checkpoints] == [(2, 8), (4, 16), (6, 24), (8, 32), (10, 40)]
    assert monitor.checkpoints[0].path == "/work/run/checkpoints/my_style-000002.safetensors"
    assert of(Finished, signals) == [Finished("/work/run/checkpoints/my_style.safetensors")]
    assert monitor.failure is None and monitor.anomalies == [] and monitor.oom_skips == 0
    assert signals.index(ends[-1]) < signals.index(monitor.finished)


def test_kohya_prints_an_epoch_as_it_begins_so_the_one_before_has_ended():
    assert parse_line("kohya", "epoch 3/10") == [EpochEnd(2, 10, None)]
    assert parse_line("kohya", "epoch 1/10") == [Header(None, 10)]
    assert parse_line("kohya", "epoch is incremented. current_epoch: 0, epoch: 1") == []


def test_kohya_lines():
    frame = "steps:   0%|   | 1/1600 [00:00<20:09,  1.32it/s, avr_loss=0.087]"
    assert parse_line("kohya", frame) == [Step(1, 1600, None, 0.087, pytest.approx(1 / 1.32))]
    slow = "steps:  12%|█▏  | 190/1600 [12:40<1:34:05,  4.00s/it, avr_loss=0.112]"
    assert parse_line("kohya", slow) == [Step(190, 1600, None, 0.112, 4.0)]
    assert parse_line("kohya", "steps:   0%|          | 0/1600 [00:00<?, ?it/s]") == []
    assert parse_line("kohya", "validation steps:  50%|█ | 1/2 [00:01<00:01,  1.0it/s, val_avg_loss=0.1]") == []
    assert parse_line("kohya", "  total optimization steps / 学習ステップ数: 1600") == [Header(1600, None)]
    assert parse_line("kohya", "  num epochs / epoch数: 10") == [Header(None, 10)]
    assert parse_line("kohya", "saving checkpoint: /out/my_style-step00000500.safetensors") == [
        Checkpoint("/out/my_style-step00000500.safetensors", None, 500)
    ]
    assert parse_line("kohya", "saving checkpoint: /out/my_style-000005.safetensors") == [
        Checkpoint("/out/my_style-000005.safetensors", 5, None)
    ]
    assert parse_line("kohya", "model saved.") == [Finished(None)]


def test_kohya_caption_warnings_are_failures():
    (failure,) = parse_line("kohya", "No caption file found for 66 images. Training will continue without captions.")
    assert failure.kind == "captions_missing" and "66 pictures" in failure.message and ".txt" in failure.message
    (failure,) = parse_line(
        "kohya", "neither caption file nor class tokens are found. use empty caption for /work/run/images/a.png"
    )
    assert failure.kind == "captions_missing"


@pytest.mark.parametrize("name", ["kohya-oom.log", "kohya-oom-old.log"])
def test_a_cuda_out_of_memory_traceback_is_the_failure(name):
    monitor, signals = read(name, "kohya", 10)
    (oom,) = of(OutOfMemory, signals)
    assert not oom.skipped and "CUDA out of memory" in oom.text and "Tried to allocate" in oom.text
    # The launcher's own CalledProcessError afterwards is a consequence, not the cause.
    assert of(Failure, signals) == [monitor.failure]
    assert monitor.failure.kind == "out_of_memory" and "graphics card ran out of memory" in monitor.failure.message
    assert (monitor.status, monitor.epoch, monitor.step, monitor.losses) == ("failed", 1, 2, [0.0871, 0.0934])
    assert monitor.remaining_s() == pytest.approx(398 * 4.01)
    assert monitor.exited(1) == []


def test_no_data_is_a_failure_though_kohya_exits_with_0():
    monitor, signals = read("kohya-nodata.log", "kohya", 10)
    assert signals == [monitor.failure] and monitor.failure.kind == "no_data"
    assert monitor.exited(0) == []
    assert (monitor.status, monitor.finished) == ("failed", None)


def test_nan_loss_fails_and_explodes_once():
    frame = "steps:  10%|█         | 4/40 [00:02<00:52,  1.45it/s, avr_loss=nan]"
    step, failure = parse_line("kohya", frame)
    assert math.isnan(step.loss) and failure.kind == "nan_loss"
    monitor = Monitor("kohya", epochs=10)
    signals = monitor.feed(frame + "\r" + frame.replace("4/40", "5/40") + "\n")
    assert of(Anomaly, signals) == [Anomaly("explosion", monitor.anomalies[0].message)]
    assert "NaN" in monitor.anomalies[0].message
    assert len(of(Failure, signals)) == 1 and monitor.failure.kind == "nan_loss"
    (latents,) = parse_line("kohya", "RuntimeError: NaN detected in latents: /work/run/images/a.png")
    assert latents.kind == "nan_loss" and "no_half_vae" in latents.message


# --- SimpleTuner ------------------------------------------------------------------------------------


def test_simpletuner_run():
    monitor, signals = read("simpletuner.log", "simpletuner", 5)
    assert (monitor.epochs, monitor.total_steps, monitor.step, monitor.epoch) == (5, 30, 30, 5)
    assert monitor.seconds_per_step == 6.13
    # The bar renamed "Epoch E/5, Steps" closes the epoch before it; the last closes when the process ends.
    assert [e.epoch for e in of(EpochEnd, signals)] == [1, 2, 3, 4]
    assert monitor.epoch_losses[1] == pytest.approx(sum(monitor.losses[:6]) / 6)
    assert [(c.path, c.epoch, c.step) for c in monitor.checkpoints] == [
        ("/work/run/output/checkpoint-10", 2, 10),
        ("/work/run/output/checkpoint-20", 4, 20),
        ("/work/run/output/checkpoint-30", 5, 30),
    ]
    assert monitor.status == "running"
    end = monitor.exited(0)
    assert [type(s) for s in end] == [EpochEnd, Finished]
    assert end[0].epoch == 5 and end[0].loss == pytest.approx(sum(monitor.losses[24:]) / 6)
    assert monitor.finished == Finished("/work/run/output/checkpoint-30")


def test_simpletuner_lines():
    old = "Steps:  76%|███████▌  | 114/150 [12:11<03:40,  6.13s/it, lr=1e-6, step_loss=0.143]"
    assert parse_line("simpletuner", old) == [Step(114, 150, None, 0.143, 6.13)]
    new = "Epoch 3/10, Steps:  76%|███████▌  | 114/150 [12:11<03:40,  6.13s/it, lr=1e-6, step_loss=0.143]"
    assert parse_line("simpletuner", new) == [Header(None, 10), Step(114, 150, 3, 0.143, 6.13)]
    assert parse_line("simpletuner", "2024-08-16 17:25:01,121 [INFO] -  Total optimization steps = 150") == [
        Header(150, None)
    ]
    for line in (
        "2024-08-16 17:31:12,004 [INFO] Saving state to /out/checkpoint-500",
        "2024-08-16 17:31:12,004 [INFO] Saving current state to /out/checkpoint-500-tmp",
    ):
        assert parse_line("simpletuner", line) == [Checkpoint("/out/checkpoint-500", None, 500)]
    assert parse_line("simpletuner", "2024-08-16 17:31:12,004 [INFO] Removing checkpoint-100") == []
    assert parse_line("simpletuner", "lifecycle.stage training_complete") == [Finished(None)]
    (failure,) = parse_line("simpletuner", "Exception: No images were discovered by the bucket manager in the dataset")
    assert failure.kind == "no_data"


# --- ai-toolkit -------------------------------------------------------------------------------------


def test_ai_toolkit_run():
    monitor, signals = read("ai-toolkit.log", "ai-toolkit", 4)
    # Model loading and sample drawing show bars too; only the one with the loss is training.
    assert (monitor.total_steps, monitor.step, monitor.seconds_per_step, len(monitor.losses)) == (40, 40, 1.3, 40)
    assert monitor.first_loss == 0.4304
    skips = of(OutOfMemory, signals)
    assert [s.skipped for s in skips] == [True, True] and monitor.oom_skips == 2
    assert skips[0].text == "# OOM during training step, skipping batch 1/3 #"
    assert monitor.failure is None and monitor.status == "finished"
    assert [(c.epoch, c.step) for c in monitor.checkpoints] == [(2, 20), (4, 40)]
    assert monitor.finished == Finished("/work/run/output/my_style/my_style.safetensors")
    # ai-toolkit counts only steps: with 4 epochs planned, each is a tenth-step slice of the 40.
    assert sorted(monitor.epoch_losses) == [1, 2, 3, 4]
    assert monitor.epoch_losses[1] == pytest.approx(sum(monitor.losses[:10]) / 10)


def test_ai_toolkit_lines():
    frame = "my_lora:  12%|█▏  | 240/2000 [05:12<38:10,  1.30s/it, lr: 1.0e-04 loss: 4.123e-01]"
    assert parse_line("ai-toolkit", frame) == [Step(240, 2000, None, 0.4123, 1.3)]
    abort = "Error running job: OOM during training step 3 times in a row, aborting training"
    oom, failure = parse_line("ai-toolkit", abort)
    assert not oom.skipped and failure.kind == "out_of_memory"
    (crash,) = parse_line("ai-toolkit", "Error running job: Cannot find file /models/flux1-dev.safetensors")
    assert crash.kind == "crashed" and "/models/flux1-dev.safetensors" in crash.message
    assert parse_line("ai-toolkit", " - 1 completed job") == [Finished(None)]
    assert parse_line("ai-toolkit", " - 0 completed jobs") == []


def test_ai_toolkit_gives_up_after_three_ooms_in_a_row():
    monitor = Monitor("ai-toolkit")
    lines = [f"# OOM during training step, skipping batch {n}/3 #" for n in (1, 2, 3)]
    lines += ["OOM during training step 3 times in a row, aborting training", "Error running job: OOM during"]
    lines += ["Traceback (most recent call last):", '  File "run.py", line 90, in <module>']
    lines += ["RuntimeError: OOM during training step 3 times in a row, aborting training"]
    signals = monitor.feed("\n".join(lines) + "\n") + monitor.exited(1)
    assert [type(s) for s in signals] == [OutOfMemory] * 4 + [Failure]
    assert monitor.oom_skips == 3 and monitor.failure.kind == "out_of_memory"


# --- builtin ----------------------------------------------------------------------------------------


def test_builtin_run():
    monitor, signals = read("builtin.jsonl", "builtin", 3)
    assert (monitor.status, monitor.epoch, monitor.step, monitor.total_steps) == ("finished", 3, 12, 12)
    assert (monitor.vram_gb, monitor.seconds_per_step) == (7.42, 2.5)
    events = [json.loads(line) for line in (LOGS / "builtin.jsonl").read_text().splitlines()]
    assert [e.loss for e in of(EpochEnd, signals)] == [e["loss"] for e in events if e["event"] == "epoch"]
    assert [(c.epoch, c.step) for c in monitor.checkpoints] == [(1, 4), (2, 8)]
    assert monitor.finished == Finished("/work/run/output/pots.safetensors")
    assert monitor.losses == [e["loss"] for e in events if e["event"] == "step"]


def test_builtin_events():
    def line(**event) -> str:
        return json.dumps(event)

    assert parse_line("builtin", "Loading pipeline components...") == []
    assert parse_line("builtin", line(event="log", message="hello")) == []
    assert parse_line("builtin", line(event="step", step=3, total_steps=12, epoch=1, loss=0.1, elapsed_s=9.0)) == [
        Step(3, 12, 1, 0.1, 3.0)
    ]
    message = "The graphics card ran out of memory. Lower the batch size or the resolution."
    assert parse_line("builtin", line(event="error", kind="out_of_memory", message=message)) == [
        OutOfMemory(message, skipped=False),
        Failure("out_of_memory", message),
    ]
    assert parse_line("builtin", line(event="error", kind="nan_loss", message="broke down")) == [
        Failure("nan_loss", "broke down")
    ]
    monitor = Monitor("builtin")
    monitor.feed(line(event="start", total_steps=40, epochs=10, images=8, device="cuda", resumed_from_epoch=4) + "\n")
    monitor.feed(line(event="step", step=17, total_steps=40, epoch=5, loss=0.1, elapsed_s=5.0) + "\n")
    assert (monitor.epochs, monitor.total_steps, monitor.epoch, monitor.epoch_losses) == (10, 40, 5, {})


def test_a_builtin_run_stopped_on_request_is_neither_failed_nor_finished():
    monitor = Monitor("builtin")
    stopped = json.dumps({"event": "stopped", "step": 4, "epoch": 3, "message": "Stopped at your request."})
    assert monitor.feed(stopped + "\n") == [Stopped("Stopped at your request.")]
    monitor.exited(3)  # the built-in trainer's "stopped on request" code
    assert (monitor.status, monitor.failure, monitor.finished) == ("running", None, None)
    assert monitor.stopped == Stopped("Stopped at your request.")


def test_flat_epochs_raise_a_plateau_once():
    monitor = Monitor("builtin")
    signals = []
    for epoch, loss in enumerate([0.14, 0.12, 0.1001, 0.1000, 0.1002, 0.0999, 0.1001, 0.1000, 0.1001], start=1):
        signals += monitor.feed(json.dumps({"event": "epoch", "epoch": epoch, "epochs": 10, "loss": loss}) + "\n")
    assert of(Anomaly, signals) == monitor.anomalies
    assert [a.kind for a in monitor.anomalies] == ["plateau"]
    assert monitor.anomalies[0].message == "Loss hasn't changed in 5 epochs — the model may have stopped learning"


# --- the stream itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "backend", "epochs"), FIXTURES)
def test_feeding_in_small_chunks_reads_the_same(name, backend, epochs):
    whole, whole_signals = read(name, backend, epochs)
    text = (LOGS / name).read_text(encoding="utf-8")
    chunked = Monitor(backend, epochs=epochs)
    signals = [s for i in range(0, len(text), 7) for s in chunked.feed(text[i : i + 7])] + chunked.close()
    assert signals == whole_signals
    assert state(chunked) == state(whole)


def test_a_line_waits_for_its_end():
    monitor = Monitor("kohya")
    assert monitor.feed("saving checkpoint: /out/a-0000") == []
    assert monitor.feed("01.safetensors") == []
    assert monitor.close() == [Checkpoint("/out/a-000001.safetensors", 1, None)]


def test_a_traceback_with_nothing_after_it_is_the_crash():
    monitor = Monitor("kohya")
    monitor.feed('Traceback (most recent call last):\n  File "train_network.py", line 9, in <module>\n')
    monitor.feed("    main()\nKeyError: 'network_dim'\n")
    (failure,) = monitor.close()
    assert failure.kind == "crashed" and "KeyError: 'network_dim'" in failure.message


def test_a_traceback_followed_by_progress_was_not_fatal():
    monitor = Monitor("kohya")
    monitor.feed("Traceback (most recent call last):\n  File 'x.py', line 1\nValueError: a warning\n")
    monitor.feed("steps:  10%|█ | 4/40 [00:02<00:52,  1.45it/s, avr_loss=0.1]\n")
    assert monitor.close() == [] and monitor.status == "running"


@pytest.mark.parametrize("code", [137, -9])
def test_a_killed_process_is_told_apart(code):
    monitor = Monitor("ai-toolkit")
    monitor.feed("my_lora:  12%|█▏  | 240/2000 [05:12<38:10,  1.30s/it, lr: 1.0e-04 loss: 4.123e-01]")
    step, failure = monitor.exited(code)
    assert step.step == 240  # the unfinished last line was still read
    assert failure == monitor.failure and failure.kind == "killed"
    assert "ran out of memory" in failure.message and "log just stops" in failure.message


def test_other_exit_codes():
    crashed = Monitor("simpletuner")
    (failure,) = crashed.exited(1)
    assert failure.kind == "crashed" and "error code 1" in failure.message
    assert Monitor("kohya").exited(0) == [Finished(None)]


# --- anomalies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_noisy_but_falling_loss_is_no_anomaly(seed):
    rng = random.Random(seed)
    series = [0.13 * (1 - 0.025 * epoch) * (1 + rng.uniform(-0.04, 0.04)) for epoch in range(20)]
    assert all(detect_anomalies(series[:n]) == [] for n in range(1, 21))


def test_anomalies_on_constructed_series():
    assert detect_anomalies([]) == []
    assert detect_anomalies([0.14, 0.128, 0.133, 0.121, 0.124, 0.115, 0.118, 0.11, 0.113, 0.106]) == []
    flat = [0.12, 0.1, 0.0951, 0.095, 0.0952, 0.0949, 0.0951, 0.095]
    assert [a.kind for a in detect_anomalies(flat)] == ["plateau"]
    assert detect_anomalies(flat[:7]) == []  # five epochs of change, not four
    rising = [0.1, 0.09, 0.085, 0.09, 0.097, 0.11]
    (divergence,) = detect_anomalies(rising)
    assert divergence == Anomaly("divergence", "Loss is increasing — something may be wrong")
    assert detect_anomalies([0.1, 0.09, 0.085, 0.086, 0.087, 0.088]) == []  # rising, but not 10% above the lowest
    for broken in ([0.1, math.nan], [0.1, math.inf, 0.1]):
        (explosion,) = detect_anomalies(broken)
        assert explosion.kind == "explosion" and "NaN" in explosion.message


# --- the loss curve ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "losses",
    [[], [0.1], [math.nan, math.nan], [0.12, math.nan, 0.11, 0.1, math.inf, 0.09] * 30, [0.1] * 5],
    ids=["empty", "one", "all-nan", "gaps", "flat"],
)
def test_the_loss_curve_is_drawn(tmp_path, losses):
    path = draw(losses, tmp_path / "curves" / "loss.png", "Training loss", checkpoints=[2, 60, 500], width=640)
    with Image.open(path) as image:
        assert (image.format, image.size) == ("PNG", (640, 400))
        assert len(image.getcolors(1 << 16)) > 3  # more than a blank canvas


def test_the_loss_curve_marks_checkpoints(tmp_path):
    losses = [0.15 - 0.001 * i for i in range(100)]
    plain = draw(losses, tmp_path / "plain.png", "t", width=400, height=300)
    marked = draw(losses, tmp_path / "marked.png", "t", checkpoints=[50], width=400, height=300)
    with Image.open(plain) as a, Image.open(marked) as b:
        assert a.size == (400, 300) and a.tobytes() != b.tobytes()


# --- the command ------------------------------------------------------------------------------------


def run(log: Path, epochs: int, capsys, **options) -> str:
    args = {"backend": None, "json": False, "curve": None} | options
    cmd_monitor(None, argparse.Namespace(log=str(log), epochs=epochs, **args))
    return capsys.readouterr().out


@pytest.mark.parametrize(("name", "backend", "epochs"), FIXTURES)
def test_the_command_guesses_the_backend(name, backend, epochs, capsys):
    assert f"({backend}, guessed from its content)" in run(LOGS / name, epochs, capsys)


def test_the_command_says_how_the_run_stands(tmp_path, capsys):
    out = run(LOGS / "ai-toolkit.log", 4, capsys, curve=str(tmp_path / "loss.png"))
    assert "Status: finished — the LoRA is saved at /work/run/output/my_style/my_style.safetensors" in out
    assert "Epoch: 4 of 4" in out and "Loss: 0.2831 now, 0.4304 at the start" in out
    assert "Checkpoints: 2 saved" in out and "my_style_000000020.safetensors (epoch 2, step 20)" in out
    assert "Memory recoveries: 2 batches skipped" in out
    assert Image.open(tmp_path / "loss.png").size == (800, 400)

    out = run(LOGS / "kohya-oom.log", 10, capsys)
    assert "Status: failed — The graphics card ran out of memory." in out
    assert "Epoch: 1 of 10" in out

    half = tmp_path / "half.log"
    half.write_text((LOGS / "kohya.log").read_text(encoding="utf-8")[:3000], encoding="utf-8")
    out = run(half, 10, capsys)
    assert re.search(r"Status: running — step \d+ of 40, under a minute left", out)

    out = run(LOGS / "simpletuner.log", 5, capsys, backend="simpletuner")
    assert "(simpletuner, given)" in out and "Status: running — step 30 of 30" in out


def test_the_command_prints_json(capsys):
    report = json.loads(run(LOGS / "kohya.log", 10, capsys, json=True))
    assert report["status"] == "finished" and report["backend"] == "kohya"
    assert (report["epoch"], report["epochs"], report["step"], report["total_steps"]) == (10, 10, 40, 40)
    assert report["loss"] < report["first_loss"] and report["oom_skips"] == 0
    assert report["checkpoints"][0] == {
        "path": "/work/run/checkpoints/my_style-000002.safetensors",
        "epoch": 2,
        "step": 8,
    }
    assert report["anomalies"] == [] and report["failure"] is None

    report = json.loads(run(LOGS / "kohya-nodata.log", 10, capsys, json=True))
    assert report["status"] == "failed" and report["failure"]["kind"] == "no_data" and report["loss"] is None


def test_the_command_refuses_a_missing_or_unknown_log(tmp_path, capsys):
    with pytest.raises(UserError, match="can't read the training log"):
        run(tmp_path / "nowhere.log", 10, capsys)
    (tmp_path / "other.log").write_text("hello\n")
    with pytest.raises(UserError, match="--backend"):
        run(tmp_path / "other.log", 10, capsys)

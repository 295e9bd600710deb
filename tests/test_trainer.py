"""The built-in trainer on the tiny offline models: real LoRA training on CPU, kohya keys that diffusers
loads, JSON progress lines, and plain error kinds."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors import safe_open

from core.samples import scene
from core.training import commands
from core.training.builtin import TrainConfig, TrainingError, fit_to_bucket, load_picture, train
from core.training.tiny import build_tiny_model, folder_size

torch.set_num_threads(1)
KOHYA_KEY = re.compile(r"^lora_unet_[a-z0-9_]+_(to_q|to_k|to_v|to_out_0)\.(lora_down\.weight|lora_up\.weight|alpha)$")


@pytest.fixture(scope="module")
def sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("sd15"), "sd15")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("sdxl"), "sdxl")


def make_dataset(folder: Path, count: int = 3, trigger: str = "mira") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene(i, size=(96, 80)).save(folder / f"pic{i}.png")
        (folder / f"pic{i}.txt").write_text(f"{trigger}, a fox, hill number {i}\n", encoding="utf-8")
    return folder


def config(model: Path, tmp: Path, **overrides) -> TrainConfig:
    values = dict(
        model=model,
        arch="sd15",
        dataset=make_dataset(tmp / "data"),
        output=tmp / "out",
        trigger="mira",
        resolution=64,
        max_steps=3,
        rank=4,
        alpha=2,
        learning_rate=1e-2,  # large, so three steps change the pictures measurably
    )
    return TrainConfig(**(values | overrides))


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def render(pipe, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "mira, a fox", height=64, width=64, num_inference_steps=2, output_type="np", generator=generator, **kwargs
    ).images


@pytest.fixture(scope="module")
def sd15_run(sd15: Path, tmp_path_factory: pytest.TempPathFactory):
    """One 3-step sd15 run shared by the checks on its output: (result, JSON events)."""
    seen: list[dict] = []
    result = train(
        config(sd15, tmp_path_factory.mktemp("run")), emit=lambda event, **f: seen.append({"event": event, **f})
    )
    return result, seen


def test_tiny_sd15_model_loads_offline(sd15: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(sd15)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 4
    assert pipe.tokenizer("mira, a fox!").input_ids[0] == pipe.tokenizer.bos_token_id
    assert folder_size(sd15) < 10_000_000
    assert render(pipe).shape == (1, 64, 64, 3)


def test_tiny_sdxl_model_loads_offline(sdxl: Path) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    assert render(pipe).shape == (1, 64, 64, 3)


def test_training_prints_progress_and_saves_kohya_keys(sd15_run) -> None:
    result, seen = sd15_run
    steps = [e for e in seen if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert all(set(e) >= {"step", "total_steps", "epoch", "loss", "lr", "elapsed_s"} for e in steps)
    assert all(np.isfinite(e["loss"]) for e in steps)
    assert seen[-1] == {"event": "done", "steps": 3, "path": str(result.path), "elapsed_s": seen[-1]["elapsed_s"]}
    with safe_open(str(result.path), "pt") as f:
        keys = list(f.keys())
        assert keys and all(KOHYA_KEY.match(k) for k in keys), keys[:5]
        alphas = [f.get_tensor(k) for k in keys if k.endswith(".alpha")]
        assert len(alphas) * 3 == len(keys) and all(a.item() == 2.0 for a in alphas)
        assert f.get_tensor(keys[1]).shape[0] == 4  # lora_down: rank rows


def test_diffusers_loads_the_lora_and_it_changes_the_picture(sd15: Path, sd15_run) -> None:
    result, _ = sd15_run
    pipe = StableDiffusionPipeline.from_pretrained(sd15)
    before = render(pipe)
    pipe.load_lora_weights(str(result.path), adapter_name="mira")
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="mira")
    with safe_open(str(result.path), "pt") as f:
        ups = {k: f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")}
    assert len([k for k in loaded if "lora_B" in k]) == len(ups)  # every module found its place
    assert sum(t.abs().sum().item() for k, t in loaded.items() if "lora_B" in k) > 0
    after = render(pipe, cross_attention_kwargs={"scale": 4.0})
    assert np.abs(after - before).max() > 1e-3


def test_sdxl_training_runs(sdxl: Path, tmp_path: Path) -> None:
    cfg = config(sdxl, tmp_path, arch="sdxl", max_steps=2, shuffle_captions=True, gradient_checkpointing=True)
    result = train(cfg, emit=lambda *a, **k: None)
    assert result.steps == 2 and all(np.isfinite(result.losses))
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl)
    pipe.load_lora_weights(str(result.path))
    assert pipe.get_list_adapters()["unet"]


def test_epoch_checkpoints_keep_only_the_last(sd15: Path, tmp_path: Path) -> None:
    seen: list[dict] = []
    cfg = config(sd15, tmp_path, max_steps=None, epochs=4, batch_size=3, save_every_n_epochs=1, keep_last=2)
    train(cfg, emit=lambda event, **f: seen.append({"event": event, **f}))
    assert [e["epoch"] for e in seen if e["event"] == "checkpoint"] == [1, 2, 3]
    assert sorted(p.name for p in cfg.output.iterdir()) == [
        "lora-epoch002.safetensors",
        "lora-epoch003.safetensors",
        "lora.safetensors",
        "state",  # only the latest training state, for resuming
    ]


def test_missing_model_is_reported_plainly(tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as err:
        train(config(tmp_path / "no-such-model", tmp_path))
    assert err.value.kind == "model_not_found" and "was not found" in err.value.message


def test_picture_without_caption_or_trigger_is_refused(sd15: Path, tmp_path: Path) -> None:
    cfg = config(sd15, tmp_path)
    (cfg.dataset / "pic1.txt").unlink()
    with pytest.raises(TrainingError) as err:
        train(cfg)
    assert err.value.kind == "caption_missing" and "pic1.png" in err.value.message
    (cfg.dataset / "pic1.txt").write_text("a fox, mira\n", encoding="utf-8")
    with pytest.raises(TrainingError) as err:
        train(cfg)
    assert err.value.kind == "trigger_missing" and "'mira'" in err.value.message


@pytest.mark.skipif(importlib.util.find_spec("prodigyopt") is not None, reason="prodigyopt is installed")
def test_prodigy_without_its_package_is_refused(sd15: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as err:
        train(config(sd15, tmp_path, optimizer="prodigy"), emit=lambda *a, **k: None)
    assert err.value.kind == "optimizer_missing" and "prodigyopt" in err.value.message


def test_pictures_are_upright_on_white_and_cropped_to_the_bucket(tmp_path: Path) -> None:
    clear = Image.new("RGBA", (30, 20), (255, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert load_picture(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: the upright picture is 20 wide, 30 high
    Image.new("RGB", (30, 20)).save(tmp_path / "turned.jpg", exif=exif)
    assert load_picture(tmp_path / "turned.jpg").size == (20, 30)
    crop, (top, left) = fit_to_bucket(Image.new("RGB", (200, 100)), (64, 64))
    assert crop.size == (64, 64) and (top, left) == (0, 32)


def test_subprocess_prints_json_lines_and_exit_codes(sd15: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(config(sd15, tmp_path, max_steps=2).model_dump_json(), encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text(config(tmp_path / "missing", tmp_path).model_dump_json(), encoding="utf-8")
    run = [sys.executable, "-m", "core.training.builtin", "--config"]
    done = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = events(done.stdout)
    assert [e["step"] for e in lines if e["event"] == "step"] == [1, 2] and lines[-1]["event"] == "done"
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0
    assert events(failed.stdout)[-1]["event"] == "error" and events(failed.stdout)[-1]["kind"] == "model_not_found"


def test_tiny_model_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    top = argparse.ArgumentParser()
    commands.add_parsers(top.add_subparsers(dest="command"))
    args = top.parse_args(["tiny-model", str(tmp_path / "tiny"), "--arch", "sd15"])
    args.run(None, args)
    assert "Wrote a tiny SD15 model" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "model_index.json").is_file()

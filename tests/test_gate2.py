"""Gate 2: training settings, the memory estimate, the backends' config files and the ``config`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import tomllib
from pathlib import Path

import pytest
import yaml

from core import intent as intents
from core.families import Family
from core.grimoire import Project
from core.intent import LoraType
from core.store import open_store
from core.training import configs, gate2, params, vram
from core.training.config_commands import add_parsers
from core.training.configs import Backend, Job
from core.training.params import Optimizer, Preset

TRICKY = 'ink "wash"\n[x] = 1 # not a comment'


def loratrain(settings, capsys, *argv: str) -> str:
    """Run a subcommand of this package the way ``core.cli.main`` does; returns what it printed."""
    top = argparse.ArgumentParser(prog="loratrain")
    add_parsers(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    result = args.run(settings, args)
    if asyncio.iscoroutine(result):
        asyncio.run(result)
    return capsys.readouterr().out


def project_with_pictures(settings, family: Family = Family.sdxl, pictures: int = 12) -> Project:
    project = Project.at(settings, "inky")
    intents.create(project, LoraType.style, family, "inkysty", "loose ink washes")
    for i in range(pictures):
        (project.dataset_dir / f"p{i:02}.png").write_bytes(b"png")
        (project.dataset_dir / f"p{i:02}.txt").write_text("inkysty, a cat", encoding="utf-8")
    return project


def job(settings, family: Family, trigger: str = "inkysty", **changes) -> Job:
    chosen = params.defaults(family, LoraType.style, 12).with_overrides(**changes)
    return Job(Project.at(settings, "inky"), chosen, "/models/base.safetensors", trigger)


# --- settings -------------------------------------------------------------------------------------


def test_presets_and_ranges_come_from_the_reference_tables():
    assert params.preset_epochs() == {Preset.quick: 5, Preset.standard: 15, Preset.thorough: 25}
    assert params.safe_ranges()["learning_rate"].high == 0.0005
    assert [params.repeats_for(n) for n in (10, 15, 38, 100, 500, 2)] == [10, 7, 3, 1, 1, 20]


def test_defaults_follow_family_and_picture_count():
    sdxl = params.defaults(Family.sdxl, LoraType.style, 38)
    assert (sdxl.resolution, sdxl.text_encoder_lr, sdxl.repeats, sdxl.epochs) == (1024, 0.0, 3, 15)
    assert sdxl.total_steps == 38 * 3 * 15 and sdxl.shuffle_captions
    sd15 = params.defaults(Family.sd15, LoraType.character, 10, Preset.quick)
    assert (sd15.resolution, sd15.text_encoder_lr, sd15.total_steps) == (512, 0.00005, 500)
    assert not params.defaults(Family.flux, LoraType.style, 20).shuffle_captions  # sentence captions
    assert params.validate(sdxl) == [] and params.validate(sd15) == []
    assert params.validate(params.defaults(Family.sdxl, LoraType.style, 20, optimizer=Optimizer.prodigy)) == []


def test_out_of_range_values_are_named_plainly():
    bad = params.defaults(Family.sdxl, LoraType.style, 20).with_overrides(learning_rate=0.001, rank=256, epochs=60)
    problems = " ".join(params.validate(bad))
    assert "learning rate is 0.001, outside the safe range 1e-05–0.0005" in problems
    assert "rank is 256" in problems and "epochs is 60" in problems
    assert "parameters-guide.md" in problems


# --- memory estimate ------------------------------------------------------------------------------


@pytest.mark.parametrize("point", vram.REFERENCE_POINTS, ids=lambda p: f"{p.family}-{p.optimizer}")
def test_estimate_lands_in_the_published_ranges(point):
    result = vram.estimate(
        point.family,
        point.resolution,
        point.batch,
        point.rank,
        point.optimizer,
        point.precision,
        point.gradient_checkpointing,
        point.cache_text_encoder,
    )
    assert point.low_gb <= result.estimate_gb <= point.high_gb, point.source


@pytest.mark.parametrize("family", list(Family))
def test_estimate_grows_with_resolution_batch_and_rank(family):
    def gb(**kw):
        return vram.estimate(family, **({"resolution": 768, "batch": 2, "rank": 16} | kw)).estimate_gb

    assert gb(resolution=512) < gb(resolution=768) < gb(resolution=1024)
    assert gb(batch=1) < gb(batch=2) < gb(batch=4)
    assert gb(rank=8) < gb(rank=16) < gb(rank=64)
    without = vram.estimate(family, 1024, 1, 16, gradient_checkpointing=False).estimate_gb
    assert vram.estimate(family, 1024, 1, 16).estimate_gb < without


def test_fit_uses_the_20_percent_margin_and_recommends_the_largest_batch():
    need = vram.estimate(Family.sd15, 512, 1, 16, gradient_checkpointing=False).estimate_gb
    assert vram.estimate(Family.sd15, 512, 1, 16, gradient_checkpointing=False, available_gb=need * 1.21).fits
    assert not vram.estimate(Family.sd15, 512, 1, 16, gradient_checkpointing=False, available_gb=need * 1.19).fits
    roomy = vram.estimate(Family.sd15, 512, 4, 16, available_gb=80)
    assert roomy.fits and roomy.recommended_batch == vram.MAX_BATCH


def test_too_little_memory_lowers_the_batch_then_gives_levers(settings, capsys):
    base = ("vram", "--model", "sd15", "--resolution", "512", "--batch", "4", "--rank", "16")
    lowered = json.loads(
        loratrain(settings, capsys, *base, "--no-gradient-checkpointing", "--available", "10", "--json")
    )
    assert not lowered["fits"] and lowered["recommended_batch"] == 1

    out = loratrain(settings, capsys, *base, "--no-gradient-checkpointing", "--optimizer", "adamw", "--available", "6")
    assert "even at batch 1" in out
    steps = [line for line in out.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert "gradient checkpointing" in steps[0] and "8-bit AdamW" in steps[1]
    assert "quality is unchanged" in steps[0]  # each lever says why


def test_vram_json_prints_exactly_the_required_keys(settings, capsys):
    out = loratrain(
        settings, capsys, "vram", "--model", "sdxl", "--resolution", "1024", "--batch", "1", "--rank", "16",
        "--available", "24", "--json",
    )  # fmt: skip
    data = json.loads(out)
    assert set(data) == {"estimate_gb", "breakdown", "available_gb", "fits", "recommended_batch"}
    assert isinstance(data["estimate_gb"], float) and data["available_gb"] == 24.0 and data["fits"] is True
    assert sum(data["breakdown"].values()) == pytest.approx(data["estimate_gb"], abs=0.05)


# --- backend config files -------------------------------------------------------------------------


def test_kohya_files_pass_their_checks_and_keep_the_trap_values(settings):
    j = job(settings, Family.sdxl)
    written = configs.write(Backend.kohya, j)
    assert written.problems == []
    train = tomllib.loads(written.files[0].read_text(encoding="utf-8"))
    dataset = tomllib.loads(written.files[1].read_text(encoding="utf-8"))
    assert train["caption_extension"] == ".txt" and train["keep_tokens"] == 1
    assert (train["save_every_n_epochs"], train["save_last_n_epochs"]) == (5, 3)
    assert train["network_train_unet_only"] is True and train["network_module"] == "networks.lora"
    assert isinstance(train["learning_rate"], float) and "resolution" not in train
    root = j.project.root.resolve()
    for key in ("output_dir", "logging_dir", "dataset_config"):
        assert Path(train[key]).resolve().is_relative_to(root)
    subset = dataset["datasets"][0]["subsets"][0]
    assert subset["image_dir"] == str(j.project.dataset_dir) and subset["num_repeats"] == j.params.repeats
    assert dataset["general"]["caption_extension"] == ".txt" and dataset["general"]["bucket_reso_steps"] % 32 == 0
    assert configs.check_kohya_dataset(dataset, Family.sdxl) == []


def test_a_misspelt_or_mistyped_kohya_key_is_an_error(settings):
    train, dataset = configs.kohya_configs(job(settings, Family.sd15))
    train["network_dimm"] = train.pop("network_dim")
    train["learning_rate"] = "1e-4"
    train["mixed_precision"] = "fp32"
    problems = " ".join(configs.check_kohya(train))
    assert "unknown key 'network_dimm'" in problems
    assert "'learning_rate' must be int or float" in problems and "'mixed_precision' is 'fp32'" in problems
    dataset["datasets"][0]["subsets"][0]["num_repeat"] = 3
    assert "unknown key 'num_repeat'" in " ".join(configs.check_kohya_dataset(dataset, Family.sd15))


def test_simpletuner_ai_toolkit_and_builtin_files_parse_back_and_pass(settings):
    flux = job(settings, Family.flux)
    st = configs.write(Backend.simpletuner, flux)
    assert st.problems == []
    config = json.loads(st.files[0].read_text(encoding="utf-8"))
    sources = json.loads(st.files[1].read_text(encoding="utf-8"))
    assert config["model_family"] == "flux" and config["checkpoints_total_limit"] == 3
    assert config["checkpoint_step_interval"] == flux.params.steps_per_epoch * 5
    assert sources[0]["caption_strategy"] == "textfile" and sources[0]["repeats"] == flux.params.repeats - 1
    assert all(Path(s.get("cache_dir_vae", s.get("cache_dir"))).is_relative_to(flux.project.root) for s in sources)

    ai = configs.write(Backend.ai_toolkit, flux)
    assert ai.problems == []
    process = yaml.safe_load(ai.files[0].read_text(encoding="utf-8"))["config"]["process"][0]
    assert process["datasets"][0]["caption_ext"] == "txt" and process["save"]["max_step_saves_to_keep"] == 3
    assert process["train"]["steps"] == flux.params.total_steps and process["model"]["is_flux"] is True
    assert Path(process["training_folder"]).is_relative_to(flux.project.root)

    sdxl = job(settings, Family.sdxl)
    builtin = configs.write(Backend.builtin, sdxl)
    assert builtin.problems == []
    data = json.loads(builtin.files[0].read_text(encoding="utf-8"))
    assert data["arch"] == "sdxl" and data["keep_last"] == 3
    assert data["epochs"] == sdxl.params.epochs * sdxl.params.repeats  # same total views without repeats
    from core.training.builtin import TrainConfig  # the trainer's own schema accepts the file

    assert TrainConfig.model_validate(data).save_every_n_epochs == 5 * sdxl.params.repeats


@pytest.mark.parametrize("backend", list(Backend))
def test_a_quote_or_new_line_in_the_trigger_cannot_break_a_config(settings, backend):
    family = Family.sd15 if backend is Backend.builtin else Family.sdxl
    tricky = job(settings, family, trigger=TRICKY)
    files, problems = configs.render(backend, Job(tricky.project, tricky.params, TRICKY, TRICKY))
    assert problems == []
    loads = {".toml": tomllib.loads, ".json": json.loads, ".yaml": yaml.safe_load}
    parsed = [loads[Path(name).suffix](text) for name, text in files.items()]  # every file still parses
    assert _find(parsed[0]) == TRICKY  # and the main one holds the text exactly


def _find(data) -> str | None:
    """The first string value equal to TRICKY anywhere in a parsed config."""
    if data == TRICKY:
        return data
    children = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
    return next((found for child in children if (found := _find(child))), None)


# --- Gate 2 ---------------------------------------------------------------------------------------


def test_config_writes_config_md_and_records_gate_2(settings, capsys):
    project = project_with_pictures(settings)
    out = loratrain(settings, capsys, "config", "inky", "--backend", "kohya", "--preset", "quick", "--available", "24")
    assert "Gate 2 (config): GO" in out
    text = project.read("config.md")
    lines = text.splitlines()
    assert lines[0] == "# Training Config: inky"
    for field in (
        "Backend",
        "Base model",
        "Preset",
        "Key parameters",
        "Estimated VRAM",
        "Estimated time",
        "Config file",
    ):
        assert any(line.startswith(f"- **{field}**: ") for line in lines[1:8]), field
    assert "- **Key parameters**: lr=0.0001, epochs=5, batch=1, rank=16" in text
    assert "(available: 24 GB)" in text and "measured by the dry run" in text
    assert "resources/training/parameters-guide.md" in text and "resources/training/presets.md" in text

    async def recorded():
        async with open_store(settings.database_path) as store:
            return await store.gate("inky", 2)

    gate = asyncio.run(recorded())
    assert gate["passed"] is True and gate["details"]["backend"] == "kohya"
    config_files = [Path(f) for f in gate["details"]["files"]]
    assert gate["fingerprint"] == gate2.fingerprint(config_files)

    loratrain(settings, capsys, "config", "inky", "--backend", "kohya", "--preset", "quick", "--rank", "32",
              "--available", "24")  # fmt: skip
    assert asyncio.run(recorded())["fingerprint"] != gate["fingerprint"]  # a changed setting voids the old result


def test_out_of_range_settings_are_no_go_with_plain_reasons(settings, capsys):
    project_with_pictures(settings)
    out = loratrain(
        settings, capsys, "config", "inky", "--backend", "kohya", "--learning-rate", "0.01", "--available", "24"
    )
    assert "NO-GO" in out and "learning rate is 0.01, outside the safe range" in out
    assert "NO-GO" in project_with_text(settings)


def test_too_small_a_gpu_is_no_go_with_what_to_change(settings, capsys):
    project_with_pictures(settings)
    out = loratrain(settings, capsys, "config", "inky", "--backend", "kohya", "--available", "6")
    assert "NO-GO" in out and "20% safety margin" in out and "Cache the text encoders" in out


def test_flux_on_the_builtin_trainer_is_refused_plainly(settings, capsys):
    project_with_pictures(settings, Family.flux)
    out = loratrain(settings, capsys, "config", "inky", "--backend", "builtin", "--available", "80")
    assert "NO-GO" in out
    assert "built-in trainer (diffusers + peft) cannot train FLUX.1 [dev]; choose kohya sd-scripts" in out
    assert gate2.compatibility(Backend.simpletuner, Family.sd15) and not gate2.compatibility(Backend.kohya, Family.flux)


def test_kohya_flux_finds_its_text_encoders_and_autoencoder_or_says_which_is_missing(settings, capsys, tmp_path):
    project_with_pictures(settings, Family.flux)
    models = tmp_path / "ComfyUI" / "models"
    for part in ("unet/flux1-dev.safetensors", "clip/clip_l.safetensors", "clip/t5xxl_fp16.safetensors"):
        (models / part).parent.mkdir(parents=True, exist_ok=True)
        (models / part).write_bytes(b"weights")
    flux = str(models / "unet" / "flux1-dev.safetensors")
    out = loratrain(settings, capsys, "config", "inky", "--backend", "kohya", "--model", flux, "--available", "80")
    assert "NO-GO" in out and "kohya needs the autoencoder (ae) for Flux as its own file" in out

    (models / "vae").mkdir()
    (models / "vae" / "ae.safetensors").write_bytes(b"weights")
    out = loratrain(settings, capsys, "config", "inky", "--backend", "kohya", "--model", flux, "--available", "80")
    assert "Gate 2 (config): GO" in out
    train = tomllib.loads((Project.at(settings, "inky").root / "config" / "kohya-train.toml").read_text())
    assert train["clip_l"] == str(models / "clip" / "clip_l.safetensors")
    assert train["t5xxl"] == str(models / "clip" / "t5xxl_fp16.safetensors")
    assert train["ae"] == str(models / "vae" / "ae.safetensors")
    assert "kohya trains Flux from files on this machine" in loratrain(
        settings, capsys, "config", "inky", "--backend", "kohya", "--available", "80"
    )  # the public name is no file: kohya can't use it


def project_with_text(settings) -> str:
    return Project.at(settings, "inky").read("config.md")

"""How each trainer is started: the run's own copy of the approved config (dry-run limit, smaller batch,
resume) and its command line; and kohya, through ``accelerate launch`` as for real, with a stand-in
``train_network.py`` that prints kohya's output — the dry run and training read it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from core.errors import UserError
from core.families import Family
from core.grimoire import Project
from core.intent import LoraType
from core.training import configs
from core.training.configs import Backend
from core.training.launch import NO_SAVES, Run, prepare, read_config
from core.training.params import defaults
from tests.conftest import STANDINS, machine_passes, make_project


@pytest.fixture
def project(settings) -> Project:
    project = Project.at(settings, "pots")
    project.dataset_dir.mkdir(parents=True)
    return project


def written(project: Project, backend: Backend, family: Family = Family.sdxl) -> list[Path]:
    params = defaults(family, LoraType.style, 20).with_overrides(batch_size=4)
    return configs.write(backend, configs.Job(project, params, "/models/base.safetensors", "potstyle")).files


@pytest.fixture
def trainers(tmp_path, monkeypatch) -> None:
    """Each external trainer 'installed' where loratrain looks for it (only their marker files)."""
    for variable, marker in (("KOHYA", "train_network.py"), ("AI_TOOLKIT", "run.py")):
        folder = tmp_path / variable.lower()
        folder.mkdir()
        (folder / marker).write_text("")
        monkeypatch.setenv(f"LORATRAIN_{variable}_DIR", str(folder))
    monkeypatch.setenv("LORATRAIN_SIMPLETUNER_DIR", str(tmp_path))
    (tmp_path / "simpletuner").mkdir()


def test_the_dry_run_gets_its_own_copy_with_a_step_limit(project, trainers):
    files = {b: written(project, b) for b in Backend}
    before = {f: f.read_bytes() for fs in files.values() for f in fs}

    kohya = prepare(Backend.kohya, files[Backend.kohya], project, Family.sdxl, Run(steps=3))
    train = tomllib.loads(kohya.files[0].read_text())
    assert train["max_train_steps"] == 3 and "max_train_epochs" not in train  # kohya's epochs would win
    assert "save_every_n_epochs" not in train and train["output_dir"] == str(project.root / "dryrun")
    assert train["dataset_config"] == str(kohya.files[1])
    assert kohya.files[0].parent == project.root / "config" / "dryrun"
    assert kohya.argv[1:4] == ["-m", "accelerate.commands.launch", "--num_cpu_threads_per_process"]
    assert kohya.argv[-2:] == [str(Path(kohya.cwd) / "sdxl_train_network.py"), f"--config_file={kohya.files[0]}"]

    simple = prepare(Backend.simpletuner, files[Backend.simpletuner], project, Family.sdxl, Run(steps=3))
    config = read_config(simple.files[0])
    assert (config["max_train_steps"], config["num_train_epochs"]) == (3, 0)
    assert config["checkpoint_step_interval"] == config["validation_step_interval"] == NO_SAVES
    assert simple.argv[-1] == "train" and simple.env["CONFIG_BACKEND"] == "json"
    assert simple.env["CONFIG_PATH"] == str(simple.files[0])

    toolkit = prepare(Backend.ai_toolkit, files[Backend.ai_toolkit], project, Family.sdxl, Run(steps=3))
    process = yaml.safe_load(toolkit.files[0].read_text())["config"]["process"][0]
    assert process["train"]["steps"] == 3 and process["train"]["disable_sampling"] is True
    assert process["save"]["save_every"] == NO_SAVES and toolkit.argv[-2:] == [
        str(Path(toolkit.cwd) / "run.py"),
        str(toolkit.files[0]),
    ]

    builtin = prepare(Backend.builtin, files[Backend.builtin], project, Family.sdxl, Run(steps=3))
    config = read_config(builtin.files[0])
    assert (config["max_steps"], config["save_every_n_epochs"], config["resume"]) == (3, 0, False)
    assert builtin.argv[1:] == ["-m", "core.training.builtin", "--config", str(builtin.files[0])]

    assert {f: f.read_bytes() for fs in files.values() for f in fs} == before  # what Gate 2 approved is untouched


def test_a_smaller_batch_keeps_the_amount_of_training(project, trainers):
    kohya = prepare(Backend.kohya, written(project, Backend.kohya), project, Family.sdxl, Run(batch_size=2))
    train, dataset = (tomllib.loads(f.read_text()) for f in kohya.files)
    assert train["train_batch_size"] == dataset["datasets"][0]["batch_size"] == 2
    assert train["max_train_epochs"] == 15  # kohya counts epochs: the same pictures are seen

    files = written(project, Backend.ai_toolkit)
    approved = yaml.safe_load(files[0].read_text())["config"]["process"][0]
    toolkit = prepare(Backend.ai_toolkit, files, project, Family.sdxl, Run(batch_size=1))
    process = yaml.safe_load(toolkit.files[0].read_text())["config"]["process"][0]
    assert process["train"]["batch_size"] == 1
    assert process["train"]["steps"] == 4 * approved["train"]["steps"]  # it counts steps: four times as many
    assert process["save"]["save_every"] == 4 * approved["save"]["save_every"]


def test_a_real_run_saves_its_state_and_resumes_from_the_newest(project, trainers):
    files = written(project, Backend.kohya)
    fresh = tomllib.loads(prepare(Backend.kohya, files, project, Family.sdxl, Run()).files[0].read_text())
    assert fresh["save_state"] is True and "resume" not in fresh
    for epoch in (5, 10):
        (project.root / "checkpoints" / f"pots-{epoch:06d}-state").mkdir(parents=True)
    resumed = tomllib.loads(prepare(Backend.kohya, files, project, Family.sdxl, Run(resume=True)).files[0].read_text())
    assert resumed["resume"] == str(project.root / "checkpoints" / "pots-000010-state")

    simple = prepare(Backend.simpletuner, written(project, Backend.simpletuner), project, Family.sdxl, Run(resume=True))
    assert read_config(simple.files[0])["resume_from_checkpoint"] == "latest"


def test_a_trainer_that_is_not_installed_is_named(project, monkeypatch):
    monkeypatch.delenv("LORATRAIN_KOHYA_DIR", raising=False)
    monkeypatch.setenv("PATH", "/nowhere")
    with pytest.raises(UserError, match="kohya isn't ready to run here: no sd-scripts folder found"):
        prepare(Backend.kohya, written(project, Backend.kohya), project, Family.sdxl, Run(steps=3))


@pytest.fixture
def kohya_project(cli, settings, tmp_path, painting, monkeypatch) -> Project:
    monkeypatch.setenv("LORATRAIN_KOHYA_DIR", str(STANDINS / "kohya"))
    make_project(cli, tmp_path, painting)
    code, _, err = cli("config", "pots", "--backend", "kohya", "--model", "/models/sd15.safetensors", "--resolution",
                       "512", "--available", "24", "--batch", "5", "--epochs", "6", "--repeats", "1")  # fmt: skip
    assert code == 0, err
    machine_passes(settings)
    return Project.existing(settings, "pots")


def test_kohya_dry_run_and_training_are_read_from_its_output(cli, kohya_project):
    code, out, err = cli("dryrun", "pots")
    assert "Gate 4 (dry run): Dry run passed — model loaded, 3 steps completed, no errors." in out, out + err
    code, out, err = cli("train", "pots", "--yes")
    assert code == 0, out + err
    assert "Checkpoint saved at epoch 5 (loss curve attached)." in out
    assert "Training finished: pots.safetensors is saved in" in out
    progress = kohya_project.path("progress.md").read_text()
    assert "- **Epoch**: 6 of 6" in progress and "- **Step**: 12 of 12" in progress
    assert "- **Loss**: 0.1080 now, 0.1190 at the start" in progress
    assert (kohya_project.root / "checkpoints" / "pots-000005-state").is_dir()  # kohya can resume from here

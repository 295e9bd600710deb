"""How each trainer is started: its command line, and the copy of its config a run actually uses.

Gate 2's files stay as they were approved (their fingerprint is what the gates judged); a run gets its
own copy under ``config/run/`` (or ``config/dryrun/``), changed only in what the run itself decides:
a step limit and a scratch output folder for the dry run, a smaller batch after an out-of-memory
error (with the length kept comparable), saving and resuming progress. Copies are written by the same
libraries as the originals (tomli-w, json, yaml.safe_dump).

Every trainer runs as a subprocess, so a crash or an out-of-memory kill is caught, not fatal.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.environment.probe import backend_facts
from core.errors import UserError
from core.families import Family
from core.grimoire import Project, inside, write_atomic
from core.training.configs import Backend, dump_json, dump_toml, dump_yaml

KOHYA_SCRIPTS = {Family.sd15: "train_network.py", Family.sdxl: "sdxl_train_network.py",
                 Family.pony: "sdxl_train_network.py", Family.flux: "flux_train_network.py"}  # fmt: skip
NO_SAVES = 10**9  # a save interval no dry run reaches


@dataclass
class Run:
    """What a run changes in the approved config."""

    steps: int | None = None  # a dry run's step limit; None trains the configured length
    batch_size: int | None = None  # after out-of-memory retries; None keeps the configured one
    resume: bool = False  # continue from the last saved state where the trainer can


@dataclass
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    files: list[Path] = field(default_factory=list)  # the run's config copies, main one first
    output: Path = Path()  # where the trainer writes its LoRA files


def batch_size(backend: Backend, files: list[Path]) -> int:
    """The batch size a backend's approved config trains with."""
    config = read_config(files[0])
    match backend:
        case Backend.kohya | Backend.simpletuner:
            return int(config["train_batch_size"])
        case Backend.ai_toolkit:
            return int(config["config"]["process"][0]["train"]["batch_size"])
        case Backend.builtin:
            return int(config["batch_size"])


def prepare(backend: Backend, files: list[Path], project: Project, family: Family, run: Run) -> Launch:
    """Write the run's config copies and return how to start the trainer on them."""
    folder = project.root / "config" / ("dryrun" if run.steps else "run")
    output = project.root / ("dryrun" if run.steps else "checkpoints")
    configs = {path.name: read_config(path) for path in files}
    match backend:
        case Backend.builtin:
            _builtin(configs["builtin.json"], run, output)
        case Backend.kohya:
            _kohya(configs["kohya-train.toml"], configs["kohya-dataset.toml"], run, output, folder)
        case Backend.simpletuner:
            _simpletuner(configs["simpletuner-config.json"], configs["simpletuner-multidatabackend.json"], run,
                         output, folder)  # fmt: skip
        case Backend.ai_toolkit:
            _ai_toolkit(configs["ai-toolkit.yaml"], run, output)
    written = []
    for name, config in configs.items():
        path = inside(project.root, folder / name)
        write_atomic(path, _write(path, config))
        written.append(path)
    return _command(backend, written, family, output)


# --- each trainer's changes -----------------------------------------------------------------------


def _builtin(config: dict, run: Run, output: Path) -> None:
    config["output"] = str(output)
    if run.steps:
        config.update(max_steps=run.steps, save_every_n_epochs=0)
    if run.batch_size:
        config["batch_size"] = run.batch_size  # it counts epochs, so the pictures seen stay the same
    config["resume"] = run.resume


def _kohya(train: dict, dataset: dict, run: Run, output: Path, folder: Path) -> None:
    train["output_dir"] = str(output)
    train["dataset_config"] = str(folder / "kohya-dataset.toml")
    if run.steps:  # epochs win over steps in kohya, so they must go for the limit to hold
        for key in ("max_train_epochs", "save_every_n_epochs", "save_last_n_epochs"):
            train.pop(key, None)
        train.update(max_train_steps=run.steps, output_name="dryrun")
    else:
        train["save_state"] = True  # with each checkpoint, so a stopped run can resume
        latest = latest_kohya_state(output, train["output_name"])
        if run.resume and latest:
            train["resume"] = str(latest)
    if run.batch_size:
        train["train_batch_size"] = run.batch_size
        for block in dataset.get("datasets", []):
            block["batch_size"] = run.batch_size


def latest_kohya_state(output: Path, name: str) -> Path | None:
    """kohya's newest ``{name}-{epoch:06d}-state`` folder (it saves one beside each checkpoint)."""
    states = sorted(output.glob(f"{name}-[0-9][0-9][0-9][0-9][0-9][0-9]-state"))
    return states[-1] if states else None


def _simpletuner(config: dict, backends: list, run: Run, output: Path, folder: Path) -> None:
    config["output_dir"] = str(output)
    config["data_backend_config"] = str(folder / "simpletuner-multidatabackend.json")
    if run.steps:
        config.update(max_train_steps=run.steps, num_train_epochs=0, checkpoint_step_interval=NO_SAVES,
                      validation_step_interval=NO_SAVES)  # fmt: skip
    elif run.resume:
        config["resume_from_checkpoint"] = "latest"
    if run.batch_size:
        config["train_batch_size"] = run.batch_size


def _ai_toolkit(config: dict, run: Run, output: Path) -> None:
    process = config["config"]["process"][0]
    process["training_folder"] = str(output)
    train, save, sample = process["train"], process["save"], process["sample"]
    if run.batch_size and run.batch_size != train["batch_size"]:
        factor = train["batch_size"] / run.batch_size  # it counts steps: more of them, the same pictures seen
        train["steps"] = round(train["steps"] * factor)
        save["save_every"] = round(save["save_every"] * factor)
        sample["sample_every"] = round(sample["sample_every"] * factor)
        train["batch_size"] = run.batch_size
    if run.steps:
        train["steps"] = run.steps
        save["save_every"] = sample["sample_every"] = NO_SAVES
        train["disable_sampling"] = True
        config["config"]["name"] = "dryrun"
    # A re-run of the same name resumes by itself (its README), so a fresh start is the caller's choice
    # of an empty folder, not a setting.


# --- commands -------------------------------------------------------------------------------------


def _command(backend: Backend, files: list[Path], family: Family, output: Path) -> Launch:
    main = files[0]
    if backend is Backend.builtin:
        return Launch([sys.executable, "-m", "core.training.builtin", "--config", str(main)], Path.cwd(),
                      {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}, files, output)  # fmt: skip
    location, missing = backend_facts(str(backend))
    if missing or location is None:
        raise UserError(f"{backend} isn't ready to run here: {missing}. Run `loratrain env --backend {backend}`.")
    folder = Path(location) if location != "this Python" else Path.cwd()
    python = _python_of(folder)
    match backend:
        case Backend.kohya:
            argv = [python, "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1",
                    str(folder / KOHYA_SCRIPTS[family]), f"--config_file={main}"]  # fmt: skip
            return Launch(argv, folder, {"PYTHONUNBUFFERED": "1"}, files, output)
        case Backend.simpletuner:
            program = shutil.which("simpletuner", path=str(Path(python).parent)) or "simpletuner"
            env = {"CONFIG_BACKEND": "json", "CONFIG_PATH": str(main), "PYTHONUNBUFFERED": "1"}
            return Launch([program, "train"], folder, env, files, output)
        case _:
            return Launch([python, str(folder / "run.py"), str(main)], folder, {"PYTHONUNBUFFERED": "1"}, files, output)


def _python_of(folder: Path) -> str:
    """A trainer's own virtual environment when it has one (they pin their own libraries), else ours."""
    for candidate in (folder / "venv" / "bin" / "python", folder / ".venv" / "bin" / "python"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return sys.executable


# --- reading and writing configs ------------------------------------------------------------------


def read_config(path: Path) -> dict | list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(text)
    return json.loads(text)


def _write(path: Path, config: dict | list) -> str:
    if path.suffix == ".toml":
        return dump_toml(config)
    if path.suffix in (".yaml", ".yml"):
        return dump_yaml(config)
    return dump_json(config)

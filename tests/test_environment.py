"""Gate 3 on this GPU-less machine, and the judging rules on machines described by hand."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pynvml
import pytest
import torch

import core.cli
from core import intent as intents
from core.environment.commands import add_parsers
from core.environment.gate3 import decide, fingerprint
from core.environment.probe import Environment, Gpu, backend_facts, disk_needs, gpu_memory_used_gb, probe
from core.families import Family
from core.grimoire import Project
from core.intent import LoraType
from core.store import open_store


def machine(**changes) -> Environment:
    """A healthy GPU machine's facts, as a probe there would report them; ``changes`` spoil them."""
    facts = {
        "gpus": [Gpu(name="NVIDIA GeForce RTX 4090", memory_total_gb=24.0, memory_free_gb=23.0)],
        "driver": "575.51.03",
        "cuda_driver": "12.9",
        "torch_version": "2.7.1+cu128",
        "torch_cuda": "12.8",
        "cuda_available": True,
        "cudnn": "9.5.1",
        "folder": "/data/grimoire",
        "disk_free_gb": 500.0,
        "disk_needs": disk_needs(Family.sdxl, None, 40),
        "backend_location": "this Python",
    }
    return Environment(**(facts | changes))


def codes(env: Environment) -> list[str]:
    return [p.code for p in env.problems]


@pytest.fixture
def env_cli(cli, monkeypatch: pytest.MonkeyPatch):
    """The ``cli`` runner with ``env`` among the subcommands, however core/cli.py registers it."""
    build = core.cli.parser

    def with_env() -> argparse.ArgumentParser:
        top = build()
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        if "env" not in sub.choices:
            add_parsers(sub)
        return top

    monkeypatch.setattr(core.cli, "parser", with_env)
    return cli


class FakeNVML:
    """Just the NVML calls the probe makes, answering like one RTX 4090 on a 570 driver."""

    NVMLError = pynvml.NVMLError

    def __init__(self, init_error: int | None = None) -> None:
        self.init_error = init_error
        self.shut_down = False

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> argparse.Namespace:
        return argparse.Namespace(total=24 * 2**30, free=20 * 2**30)

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.124.06"

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return 12080


def test_probe_here_finds_no_gpu_says_why_and_reports_pytorch(tmp_path: Path) -> None:
    env = probe(None, None, None, tmp_path / "grimoire")  # the real pynvml, on a machine without a driver

    assert env.gpus == [] and env.driver is None
    assert env.torch_version == torch.__version__
    assert env.torch_cuda is None and env.compatible is None
    (problem,) = [p for p in env.problems if p.code == "no_gpu"]
    assert "No NVIDIA GPU was found" in problem.problem and "no NVIDIA driver found" in problem.problem
    assert "dry run on the tiny model still works on the CPU" in problem.fix
    assert env.backend == "builtin" and env.backend_missing is None  # diffusers, peft, safetensors import


def test_env_json_reports_no_gpu_and_no_go(env_cli) -> None:
    code, out, _ = env_cli("env", "--json", "--backend", "builtin", "--dataset-size", "30")

    assert code == 0
    result = json.loads(out)
    assert result["gpus"] == [] and result["torch_cuda"] is None
    assert result["gate"]["passed"] is False
    assert result["gate"]["summary"].startswith("NO-GO: No NVIDIA GPU was found")
    assert any(item["item"] == "30 pictures" for item in result["disk_needs"])


def test_nvml_answers_become_facts_and_nvml_is_shut_down(tmp_path: Path) -> None:
    nvml = FakeNVML()
    env = probe("builtin", None, None, tmp_path, nvml=nvml)

    assert env.gpus == [Gpu(name="NVIDIA GeForce RTX 4090", memory_total_gb=24.0, memory_free_gb=20.0)]
    assert env.driver == "570.124.06" and env.cuda_driver == "12.8"
    assert nvml.shut_down
    # This PyTorch is the CPU build: with a card present that is the problem, and the fix names a real build.
    (problem,) = [p for p in env.problems if p.code == "cpu_pytorch"]
    assert "--index-url https://download.pytorch.org/whl/cu" in problem.fix


def test_a_driver_that_is_installed_but_not_running_gets_its_own_fix(tmp_path: Path) -> None:
    env = probe("builtin", None, None, tmp_path, nvml=FakeNVML(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))

    (problem,) = [p for p in env.problems if p.code == "no_gpu"]
    assert "installed but not running" in problem.problem and problem.fix.startswith("Restart the machine")


def test_driver_older_than_the_cuda_build_needs_is_incompatible_with_a_fix() -> None:
    env = machine(driver="535.183.01", cuda_driver="12.2")

    assert env.compatible is False
    (problem,) = [p for p in env.problems if p.code == "driver_too_old"]
    assert "built for CUDA 12.8, which needs NVIDIA driver 570.26 or newer" in problem.problem
    assert "535.183.01" in problem.problem
    # The newest build of PyTorch 2.7 that a 535 driver runs is CUDA 11.8 (the table's 520.61.05).
    assert problem.fix.startswith("Update the NVIDIA driver to 570.26 or newer")
    assert "pip install torch==2.7.1 --index-url https://download.pytorch.org/whl/cu118" in problem.fix


def test_a_new_enough_driver_is_compatible_and_versions_compare_as_numbers() -> None:
    assert machine(driver="575.51.03").compatible is True
    assert machine(driver="570.124.06").compatible is True  # 570.124 is newer than 570.26
    assert machine(driver="570.9.1").compatible is False


def test_a_cuda_build_missing_from_the_table_is_checked_against_the_drivers_own_cuda() -> None:
    newer = {"torch_version": "2.14.0+cu131", "torch_cuda": "13.1", "driver": "590.44.01"}
    assert machine(**newer, cuda_driver="13.2").compatible is True
    env = machine(**newer, cuda_driver="13.0")
    assert env.compatible is False
    (problem,) = [p for p in env.problems if p.code == "driver_too_old"]
    assert "runs CUDA up to 13.0 only" in problem.problem


async def test_a_healthy_machine_passes_gate_3() -> None:
    gate = await decide(machine(), None)

    assert gate.passed and gate.problems == []
    assert gate.summary.startswith("GO")


def test_too_little_disk_is_a_plain_problem() -> None:
    needs = disk_needs(Family.flux, None, 200)
    env = machine(disk_free_gb=12.0, disk_needs=needs)

    # Flux's three files from the "Disk needs" table, 200 pictures, their caches, three checkpoints.
    assert env.disk_need_gb == pytest.approx(23.8 + 9.8 + 0.6 + 2.0 + 1.0 + 1.05)
    (problem,) = [p for p in env.problems if p.code == "disk"]
    assert "needs about 38.25 GB of disk" in problem.problem and "12.0 GB is free" in problem.problem
    assert problem.fix.startswith("Free at least 26.2 GB")
    assert disk_needs(Family.sdxl, 2.5, None)[0].gb == 2.5  # a given model size replaces the table's


def test_too_little_vram_for_the_estimate_with_margin() -> None:
    assert "vram" not in codes(machine(vram_needed_gb=18.0))  # 21.6 GB needed, 23 free
    assert "vram" in codes(machine(vram_needed_gb=20.0))  # 24 GB needed


def test_kohya_is_found_by_its_folder_variable_or_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORATRAIN_KOHYA_DIR", str(tmp_path))
    location, missing = backend_facts("kohya")
    assert location == str(tmp_path) and "has no train_network.py" in missing
    assert "backend" in codes(probe("kohya", None, None, tmp_path, nvml=FakeNVML()))

    (tmp_path / "train_network.py").write_text("")
    assert backend_facts("kohya") == (str(tmp_path), None)
    assert "backend" not in codes(probe("kohya", None, None, tmp_path, nvml=FakeNVML()))

    monkeypatch.delenv("LORATRAIN_KOHYA_DIR")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert backend_facts("kohya") == (str(tmp_path), None)


def test_other_trainers_need_their_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORATRAIN_AI_TOOLKIT_DIR", raising=False)
    monkeypatch.delenv("LORATRAIN_SIMPLETUNER_DIR", raising=False)
    assert backend_facts("ai-toolkit")[1] == "LORATRAIN_AI_TOOLKIT_DIR is not set"
    assert "simpletuner is not installed" in backend_facts("simpletuner")[1]

    (tmp_path / "run.py").write_text("")
    (tmp_path / "simpletuner").mkdir()
    monkeypatch.setenv("LORATRAIN_AI_TOOLKIT_DIR", str(tmp_path))
    monkeypatch.setenv("LORATRAIN_SIMPLETUNER_DIR", str(tmp_path))
    assert backend_facts("ai-toolkit") == backend_facts("simpletuner") == (str(tmp_path), None)


def test_fingerprint_ignores_moving_numbers_but_not_the_machine() -> None:
    assert fingerprint(machine()) == fingerprint(machine(disk_free_gb=480.0))
    assert fingerprint(machine()) != fingerprint(machine(driver="580.65.06"))
    assert fingerprint(machine()) != fingerprint(machine(disk_free_gb=1.0))  # a new problem changes it


async def test_environment_md_is_written_and_gate_3_recorded(settings, tmp_path: Path) -> None:
    project = Project.at(settings, "mira")
    intents.create(project, LoraType.style, Family.sdxl, "mirastyle")
    env = machine(driver="535.183.01")

    async with open_store(tmp_path / "state.sqlite3") as store:
        gate = await decide(env, project, store)
        record = await store.gate("mira", 3)

    text = project.read("environment.md")
    lines = text.splitlines()
    assert lines[0] == "# Environment: mira"
    for label in ("GPU", "VRAM", "Driver", "CUDA", "PyTorch", "cuDNN", "Disk", "Backend"):
        assert any(line.startswith(f"- {label}: ") for line in lines), label
    assert "- GPU: NVIDIA GeForce RTX 4090 (24 GB)" in lines
    assert text.index("## Problems and fixes") < text.index("## Gate 3 Decision: NO-GO")
    assert "570.26" in text.split("## Problems and fixes")[1]
    assert record["passed"] is False and record["fingerprint"] == gate.fingerprint
    assert record["details"]["problems"][0]["code"] == "driver_too_old"


def test_env_with_a_project_writes_its_record(env_cli, tmp_path: Path) -> None:
    env_cli("new", "mira", "--type", "style", "--model", "flux", "--trigger", "mirastyle")

    code, out, _ = env_cli("env", "mira", "--backend", "ai-toolkit")

    assert code == 0
    assert "Gate 3 (environment): NO-GO: No NVIDIA GPU was found" in out
    text = (tmp_path / "grimoire/training/mira/environment.md").read_text()
    assert "## Gate 3 Decision: NO-GO" in text
    assert "Flux T5-XXL text encoder 9.8 GB" in text and "0 pictures" in text  # the project's family and dataset
    assert "- Backend: ai-toolkit, not ready" in text


def test_memory_in_use_comes_from_nvml_and_is_none_without_a_driver() -> None:
    assert gpu_memory_used_gb(FakeNVML()) == 4.0  # 24 GiB total, 20 free
    assert gpu_memory_used_gb(FakeNVML(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)) is None
    assert gpu_memory_used_gb() is None  # this machine: the real pynvml, no driver

"""The facts Gate 3 judges, gathered fresh on every call (nothing is kept, so it is safe to run any time).

``probe`` asks NVIDIA's management library (NVML, the ``nvidia-ml-py`` package) for the GPUs and the driver,
PyTorch for its build and whether it really computes on the GPU, the disk for free space, and the chosen
trainer for its files. ``Environment`` holds only those facts; its ``problems`` are derived from them and
the reference tables, so a result built by hand (a remote machine's, a test's) is judged the same way.

The external trainers are found through environment variables, because they describe the machine a worker
runs on rather than a project:

- ``LORATRAIN_KOHYA_DIR``: the kohya sd-scripts folder (it holds ``train_network.py``); without it, a
  ``train_network.py`` on ``PATH`` is used.
- ``LORATRAIN_SIMPLETUNER_DIR``: a SimpleTuner checkout (it holds the ``simpletuner`` package), for when
  ``simpletuner`` is not installed in this Python.
- ``LORATRAIN_AI_TOOLKIT_DIR``: the ostris ai-toolkit folder (it holds ``run.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, computed_field

from core import resources
from core.errors import UserError
from core.families import Family

Backend = Literal["builtin", "kohya", "simpletuner", "ai-toolkit"]
BACKENDS: tuple[str, ...] = get_args(Backend)

MATRIX = "environment/cuda-pytorch-matrix.md"
CHECKLIST = "environment/preflight-checklist.md"
VRAM_GUIDE = "environment/vram-calculator.md"
CHECKPOINTS_KEPT = 3  # the grimoire keeps the last three checkpoints (DESIGN.md)
VRAM_MARGIN = 1.2  # estimate × 1.2 must fit (resources/environment/vram-calculator.md)
ASSUMED_PICTURES = 100  # the disk table's figures are per 100 pictures

# Rows of the "Disk needs" table that hold each family's base model.
BASE_MODEL_ROWS: dict[Family, tuple[str, ...]] = {
    Family.sd15: ("SD 1.5 base model",),
    Family.sdxl: ("SDXL or Pony base model",),
    Family.pony: ("SDXL or Pony base model",),
    Family.flux: ("Flux.1-dev transformer", "Flux T5-XXL text encoder", "Flux CLIP-L and VAE"),
}

# NVML error codes (nvmlReturn_t) whose meaning the artist can act on; anything else gets the generic fix.
NVML_LIBRARY_NOT_FOUND, NVML_DRIVER_NOT_LOADED, NVML_NO_PERMISSION, NVML_GPU_IS_LOST = 12, 9, 4, 15
NVML_ADVICE: dict[int | None, tuple[str, str]] = {
    NVML_DRIVER_NOT_LOADED: (
        "an NVIDIA driver is installed but not running",
        "Restart the machine; if that does not help, reinstall the NVIDIA driver "
        "(on a rented machine, pick another one).",
    ),
    NVML_NO_PERMISSION: (
        "this user is not allowed to read the GPU",
        "Run loratrain as a user with access to the GPU; in a container, start it with GPU access "
        "(for example docker run --gpus all).",
    ),
    NVML_GPU_IS_LOST: (
        "the GPU stopped answering",
        "Restart the machine; if it happens again the card or its power supply may be failing.",
    ),
}

BACKEND_FIXES: dict[str, str] = {
    "builtin": "Install loratrain's dependencies again (pip install -e .); "
    "they include diffusers, peft and safetensors.",
    "kohya": "Download sd-scripts (git clone https://github.com/kohya-ss/sd-scripts), install its requirements, "
    "and set LORATRAIN_KOHYA_DIR to that folder.",
    "simpletuner": "Install SimpleTuner (pip install 'simpletuner[cuda]', which needs Python 3.12 or 3.13) or set "
    "LORATRAIN_SIMPLETUNER_DIR to a SimpleTuner checkout.",
    "ai-toolkit": "Download ai-toolkit (git clone https://github.com/ostris/ai-toolkit), install its requirements, "
    "and set LORATRAIN_AI_TOOLKIT_DIR to that folder.",
}

SMALL_MODEL_GB = 0.5  # below this a base model is a test model (tiny-model), which trains on the CPU; SD 1.5 is 2 GB
NO_GPU_FIX = (
    "The built-in trainer's dry run on the tiny model still works on the CPU; to train for real, use a machine "
    "with an NVIDIA GPU or rent one (coming with cloud support)."
)


class Gpu(BaseModel):
    name: str
    memory_total_gb: float  # GiB, the unit cards are sold in (a "24 GB" card reports 24 GiB)
    memory_free_gb: float


class DiskItem(BaseModel):
    item: str
    gb: float  # 10⁹ bytes, as in the "Disk needs" table


class Problem(BaseModel):
    code: str
    problem: str
    fix: str
    blocking: bool = True


class Environment(BaseModel):
    """What the machine has, as found; ``problems`` says what stands in the way of training, and how to fix it."""

    gpus: list[Gpu] = []
    nvml_error: str | None = None  # NVML's own message when it could not be asked
    nvml_code: int | None = None
    driver: str | None = None  # e.g. "570.124.06"
    cuda_driver: str | None = None  # the newest CUDA the driver runs, e.g. "12.8" (what nvidia-smi prints)
    torch_version: str
    torch_cuda: str | None  # the CUDA PyTorch was built for; None for a CPU-only build
    cuda_available: bool = False
    gpu_compute_error: str | None = None  # a tiny calculation on the GPU failed with this
    cudnn: str | None = None
    folder: str
    disk_free_gb: float
    disk_needs: list[DiskItem]
    vram_needed_gb: float | None = None  # Gate 2's estimate, when known
    model_size_gb: float | None = None  # the base model on disk, when it is a local file or folder
    backend: Backend = "builtin"
    backend_location: str | None = None
    backend_missing: str | None = None  # what is missing, in plain words; None when the trainer is there

    @computed_field
    @property
    def disk_need_gb(self) -> float:
        return round(sum(d.gb for d in self.disk_needs), 2)

    @computed_field
    @property
    def compatible(self) -> bool | None:
        """Driver, CUDA build and PyTorch agree; None when there is nothing to compare (no driver, CPU build)."""
        if not self.driver or not self.torch_cuda:
            return None
        return driver_problem(self) is None

    @computed_field
    @property
    def problems(self) -> list[Problem]:
        return find_problems(self)


def version(text: str) -> tuple[int, ...]:
    """``"570.124.06"`` → ``(570, 124, 6)``: versions compare as numbers, so 570.26 < 570.124.06."""
    return tuple(int(p) for p in re.findall(r"\d+", text))


def torch_line(torch_version: str) -> str:
    """The release line of a PyTorch version, as the matrix names it: ``"2.7.1+cu128"`` → ``"2.7"``."""
    return ".".join(torch_version.split("+")[0].split(".")[:2])


def _driver_table() -> dict[str, tuple[str, str]]:
    """CUDA version → (minimum driver, driver it starts on with reduced features), from the reference file."""
    rows = resources.table(MATRIX, "Driver per CUDA version")
    return {r["CUDA"]: (r["Minimum Linux driver"], r["Starts on (minor-version compatibility)"]) for r in rows}


def _matrix() -> dict[str, tuple[list[str], str]]:
    """PyTorch line → (its CUDA builds, the driver that runs all of them)."""
    rows = resources.table(MATRIX, "Matrix")
    return {r["PyTorch"]: ([c.strip() for c in r["CUDA builds"].split(",")], r["Minimum Linux driver"]) for r in rows}


def _install_hint(env: Environment) -> str | None:
    """The PyTorch build to install instead: the newest CUDA build of this PyTorch line that the installed
    driver runs, with its pip command; None when there is none."""
    line = _matrix().get(torch_line(env.torch_version))
    if not line or not env.driver:
        return None
    table = _driver_table()
    fitting = [c for c in line[0] if c in table and version(table[c][0]) <= version(env.driver)]
    if not fitting:
        return None
    cuda = max(fitting, key=version)
    release = env.torch_version.split("+")[0]
    return (
        f"the PyTorch build for CUDA {cuda}: pip install torch=={release} "
        f"--index-url https://download.pytorch.org/whl/cu{cuda.replace('.', '')}"
    )


def driver_problem(env: Environment) -> Problem | None:
    """The driver must be at least the one NVIDIA lists for PyTorch's CUDA build (a newer one always works)."""
    if not env.driver or not env.torch_cuda:
        return None
    needed = _driver_table().get(env.torch_cuda)
    if needed is None and env.cuda_driver:
        # A CUDA build the table lacks: the driver's own newest CUDA (what nvidia-smi prints) must reach it.
        if version(env.cuda_driver) >= version(env.torch_cuda):
            return None
        return Problem(
            code="driver_too_old",
            problem=f"PyTorch {torch_line(env.torch_version)} was built for CUDA {env.torch_cuda}, but this "
            f"machine's NVIDIA driver {env.driver} runs CUDA up to {env.cuda_driver} only.",
            fix=f"Update the NVIDIA driver, or install a PyTorch build for CUDA {env.cuda_driver} or older "
            f"(see resources/{MATRIX}).",
        )
    if needed is None:
        line = _matrix().get(torch_line(env.torch_version))
        if line is None:
            return Problem(
                code="driver_unchecked",
                problem=f"PyTorch {env.torch_version} (CUDA {env.torch_cuda}) is newer than loratrain's table, "
                f"so the driver {env.driver} could not be checked against it.",
                fix=f"Nothing to do if the dry run (Gate 4) passes; the table is resources/{MATRIX}.",
                blocking=False,
            )
        needed = (line[1], None)
    minimum, starts_on = needed
    if version(env.driver) >= version(minimum):
        return None
    reduced = (
        " It may start in CUDA's reduced-compatibility mode, but some features can fail."
        if starts_on and version(env.driver) >= version(starts_on)
        else ""
    )
    hint = _install_hint(env)
    return Problem(
        code="driver_too_old",
        problem=f"PyTorch {torch_line(env.torch_version)} was built for CUDA {env.torch_cuda}, which needs NVIDIA "
        f"driver {minimum} or newer; this machine has {env.driver}.{reduced}",
        fix=f"Update the NVIDIA driver to {minimum} or newer"
        + (f", or install {hint}" if hint else "")
        + f" (from resources/{MATRIX}).",
    )


def find_problems(env: Environment) -> list[Problem]:
    """Everything that stands in the way of real training on this machine, each with its fix, in plain words."""
    problems: list[Problem] = []
    if not env.gpus and env.backend == "builtin" and (env.model_size_gb or SMALL_MODEL_GB) < SMALL_MODEL_GB:
        problems.append(
            Problem(
                code="no_gpu",
                problem=f"No NVIDIA GPU here; the base model is a small test model ({env.model_size_gb * 1000:.0f} "
                "MB), which the built-in trainer trains on the CPU.",
                fix="A real base model (2 GB and up) needs an NVIDIA GPU: use a machine with one, or rent one.",
                blocking=False,
            )
        )
    elif not env.gpus:
        why, fix = NVML_ADVICE.get(env.nvml_code, ("the NVIDIA driver reports no card", NO_GPU_FIX))
        if env.nvml_code == NVML_LIBRARY_NOT_FOUND:
            why = "no NVIDIA driver found"
        elif env.nvml_error and env.nvml_code not in NVML_ADVICE:
            why = f"NVIDIA's management library failed: {env.nvml_error}"
        problems.append(
            Problem(
                code="no_gpu",
                problem=f"No NVIDIA GPU was found on this machine ({why}), so real training can't run here.",
                fix=fix,
            )
        )
    elif not env.torch_cuda:
        hint = _install_hint(env)
        problems.append(
            Problem(
                code="cpu_pytorch",
                problem=f"This machine has a GPU, but the PyTorch installed ({env.torch_version}) is the CPU-only "
                "build, so it can't use the card.",
                fix=f"Install {hint}." if hint else f"Install a CUDA build of PyTorch (see resources/{MATRIX}).",
            )
        )
    else:
        driver = driver_problem(env)
        if driver:
            problems.append(driver)
        if not env.cuda_available and (driver is None or not driver.blocking):
            problems.append(
                Problem(
                    code="cuda_unavailable",
                    problem="PyTorch can't reach the GPU (torch.cuda.is_available() says no), although the driver "
                    "and the build agree.",
                    fix="Make sure this process may use the GPU (in a container: docker run --gpus all; "
                    "CUDA_VISIBLE_DEVICES must not be empty), then restart the machine.",
                )
            )
        if env.gpu_compute_error:
            problems.append(
                Problem(
                    code="gpu_compute",
                    problem=f"PyTorch sees the GPU, but a tiny calculation on it failed: {env.gpu_compute_error}",
                    fix="This PyTorch build most likely has no code for this card (an RTX 50-series needs PyTorch "
                    "2.7 or newer built for CUDA 12.8): pip install --upgrade torch --index-url "
                    f"https://download.pytorch.org/whl/cu128 (see resources/{MATRIX}).",
                )
            )
    if env.gpus and env.vram_needed_gb:
        best = max(env.gpus, key=lambda g: g.memory_free_gb)
        needed = env.vram_needed_gb * VRAM_MARGIN
        if best.memory_free_gb < needed:
            problems.append(
                Problem(
                    code="vram",
                    problem=f"This run needs about {needed:.1f} GB of GPU memory with the 20% safety margin, but "
                    f"the {best.name} has {best.memory_free_gb:.1f} GB free.",
                    fix="Close other programs that use the GPU, or make the run smaller (the changes are listed "
                    f"cheapest first in resources/{VRAM_GUIDE}), or use a card with more memory.",
                )
            )
    if env.disk_free_gb < env.disk_need_gb:
        short = env.disk_need_gb - env.disk_free_gb
        parts = ", ".join(f"{d.item} {d.gb:g} GB" for d in env.disk_needs)
        problems.append(
            Problem(
                code="disk",
                problem=f"This run needs about {env.disk_need_gb:g} GB of disk ({parts}), but only "
                f"{env.disk_free_gb:.1f} GB is free at {env.folder}.",
                fix=f"Free at least {short:.1f} GB there (old checkpoints, unused models, the Hugging Face cache in "
                "~/.cache/huggingface), or point LORATRAIN_GRIMOIRE to a bigger disk.",
            )
        )
    if env.backend_missing:
        problems.append(
            Problem(
                code="backend",
                problem=f"The {env.backend} trainer isn't ready: {env.backend_missing}.",
                fix=BACKEND_FIXES[env.backend],
            )
        )
    return problems


def _nvml_facts(nvml: object | None) -> dict:
    """GPUs and driver from NVML; an NVML failure becomes a fact (its message and code), never an exception."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return {"nvml_error": "the nvidia-ml-py package is not installed"}
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        return {"nvml_error": str(err), "nvml_code": err.value}
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                Gpu(
                    name=nvml.nvmlDeviceGetName(handle),
                    memory_total_gb=round(memory.total / 2**30, 1),
                    memory_free_gb=round(memory.free / 2**30, 1),
                )
            )
        cuda = nvml.nvmlSystemGetCudaDriverVersion_v2()  # e.g. 12080 for 12.8
        return {
            "gpus": gpus,
            "driver": nvml.nvmlSystemGetDriverVersion(),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
        }
    except nvml.NVMLError as err:
        return {"nvml_error": str(err), "nvml_code": err.value}
    finally:
        nvml.nvmlShutdown()


def gpu_memory_used_gb(nvml: object | None = None) -> float | None:
    """Graphics memory in use on the first GPU now (GiB), as NVML sees it — whatever trainer holds it;
    None where NVML cannot be asked (no driver, no GPU)."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return None
    try:
        memory = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0))
        return round((memory.total - memory.free) / 2**30, 1)
    except nvml.NVMLError:
        return None
    finally:
        nvml.nvmlShutdown()


def _cudnn(number: int | None) -> str | None:
    """cuDNN's version number as people write it: 91002 → "9.10.2" (from 9 on), 8902 → "8.9.2"."""
    if number is None:
        return None
    major, rest = divmod(number, 10000) if number >= 90000 else divmod(number, 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _torch_facts() -> dict:
    """PyTorch's build, and proof by a tiny calculation that it really computes on the GPU ("available" isn't).
    torch is imported here, not at the top: it takes a second, and most commands never need it."""
    import torch

    facts = {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": _cudnn(torch.backends.cudnn.version()),
    }
    if facts["cuda_available"]:
        try:
            ones = torch.ones(2, 2, device="cuda")
            if not bool(((ones @ ones) == 2).all()):
                facts["gpu_compute_error"] = "1 × 1 + 1 × 1 did not come out as 2"
        except RuntimeError as err:
            facts["gpu_compute_error"] = str(err).strip().splitlines()[0]
    return facts


def model_size_gb(model: str | None) -> float | None:
    """The base model's size on disk in GB (a file, or a diffusers folder's files); None when it is not
    on this machine (a Hugging Face name, a missing path)."""
    path = Path(model) if model else None
    if path is None or not path.exists():
        return None
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e9, 3)


def disk_needs(family: Family, model_size_gb: float | None, dataset_size: int | None) -> list[DiskItem]:
    """What the run puts on disk, from the "Disk needs" table: base model, pictures, caches, kept checkpoints."""
    gb = {r["Item"]: float(r["Gigabytes"]) for r in resources.table(CHECKLIST, "Disk needs")}
    if model_size_gb is not None:
        needs = [DiskItem(item="base model", gb=model_size_gb)]
    else:
        needs = [DiskItem(item=row, gb=gb[row]) for row in BASE_MODEL_ROWS[family]]
    pictures = ASSUMED_PICTURES if dataset_size is None else dataset_size
    share = pictures / ASSUMED_PICTURES
    return needs + [
        DiskItem(item=f"{pictures} pictures", gb=round(gb["Your pictures"] * share, 2)),
        DiskItem(item="latent and text caches", gb=round(gb["Latent and text caches per 100 pictures"] * share, 2)),
        DiskItem(item=f"{CHECKPOINTS_KEPT} checkpoints", gb=round(gb["One LoRA checkpoint"] * CHECKPOINTS_KEPT, 2)),
    ]


def _disk_free_gb(folder: Path) -> float:
    """Free space where ``folder`` lives (or will: the nearest folder above it that exists)."""
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    return round(shutil.disk_usage(existing).free / 1e9, 1)


def _folder_with(variable: str, marker: str) -> tuple[str | None, str | None]:
    """(location, what is missing) for a trainer found through an environment variable naming its folder."""
    folder = os.environ.get(variable)
    if not folder:
        return None, f"{variable} is not set"
    if not (Path(folder) / marker).exists():
        return folder, f"{folder} has no {marker} ({variable} must name the trainer's folder)"
    return folder, None


def backend_facts(backend: str) -> tuple[str | None, str | None]:
    """(where the trainer is, what is missing) — the trainer must be there before GPU time is spent on it."""
    if backend == "builtin":
        missing = []
        for module in ("diffusers", "peft", "safetensors"):
            try:
                importlib.import_module(module)
            except Exception as err:  # a broken install fails in many ways; all mean "not runnable"
                missing.append(f"{module} ({type(err).__name__}: {err})")
        return "this Python", ("cannot import " + ", ".join(missing)) if missing else None
    if backend == "kohya":
        if os.environ.get("LORATRAIN_KOHYA_DIR"):
            return _folder_with("LORATRAIN_KOHYA_DIR", "train_network.py")
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            if folder and (Path(folder) / "train_network.py").is_file():
                return folder, None
        return None, "no sd-scripts folder found (LORATRAIN_KOHYA_DIR is not set and no train_network.py is on PATH)"
    if backend == "simpletuner":
        if importlib.util.find_spec("simpletuner") is not None:
            return "this Python", None
        location, missing = _folder_with("LORATRAIN_SIMPLETUNER_DIR", "simpletuner")
        return location, missing and f"simpletuner is not installed in this Python, and {missing}"
    return _folder_with("LORATRAIN_AI_TOOLKIT_DIR", "run.py")


def probe(
    backend: str | None,
    model_size_gb: float | None,
    dataset_size: int | None,
    folder: Path,
    *,
    family: Family = Family.sdxl,
    vram_needed_gb: float | None = None,
    nvml: object | None = None,
) -> Environment:
    """The machine's facts for a run with ``backend`` (default: the built-in trainer) of a ``family`` model.

    ``folder`` is where the run's files go (the grimoire); ``nvml`` replaces the ``pynvml`` module (tests,
    remote probes).
    """
    backend = backend or "builtin"
    if backend not in BACKENDS:
        raise UserError(f"Unknown trainer {backend!r}; choose one of: {', '.join(BACKENDS)}.")
    location, missing = backend_facts(backend)
    return Environment(
        **_nvml_facts(nvml),
        **_torch_facts(),
        folder=str(folder.resolve()),
        disk_free_gb=_disk_free_gb(folder),
        disk_needs=disk_needs(family, model_size_gb, dataset_size),
        vram_needed_gb=vram_needed_gb,
        model_size_gb=model_size_gb,
        backend=backend,
        backend_location=location,
        backend_missing=missing,
    )

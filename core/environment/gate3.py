"""Gate 3: GO / NO-GO for the environment, written to ``environment.md`` and recorded in the store.

GO needs an NVIDIA GPU that PyTorch really computes on, a driver new enough for PyTorch's CUDA build,
enough GPU memory and disk, and the chosen trainer installed. The decision is stored with a fingerprint
of the machine's lasting facts (cards, driver, builds, trainer, and which problems were found), not of
free memory or disk to the byte: those move all the time, and each move would void the gate for nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from pydantic import BaseModel

from core import intent as intents
from core.dataset.audit import list_files
from core.environment.probe import Environment, Problem, model_size_gb, probe
from core.grimoire import Project
from core.settings import Settings
from core.store import Store
from core.training.configs import default_backend


class Gate3(BaseModel):
    passed: bool
    summary: str  # one plain sentence: the decision and its main reason
    problems: list[Problem]
    fingerprint: str


def fingerprint(env: Environment) -> str:
    """A hash of the facts that decide Gate 3 and stay put while the machine is unchanged."""
    facts = {
        "gpus": [(g.name, g.memory_total_gb) for g in env.gpus],
        "facts": env.model_dump(
            include={"nvml_code", "driver", "cuda_driver", "torch_version", "torch_cuda", "cudnn", "backend"}
        ),
        "backend_location": env.backend_location,
        "problems": sorted((p.code, p.blocking) for p in env.problems),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def judge(env: Environment) -> Gate3:
    """The decision alone, without writing anything."""
    blocking = [p for p in env.problems if p.blocking]
    if blocking:
        summary = "NO-GO: " + blocking[0].problem + (f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else "")
    elif not env.gpus:
        summary = ("GO for this small test model, which trains on the CPU here; disk is enough and the trainer is "
                   "there. A real base model needs an NVIDIA GPU.")  # fmt: skip
    else:
        summary = "GO: the GPU, its driver, CUDA and PyTorch agree, memory and disk are enough, the trainer is there."
    return Gate3(passed=not blocking, summary=summary, problems=env.problems, fingerprint=fingerprint(env))


def fact_lines(env: Environment) -> list[str]:
    """The facts as ``- Label: value`` lines, each readable without knowing the others."""
    if env.gpus:
        gpu = "; ".join(f"{g.name} ({g.memory_total_gb:g} GB)" for g in env.gpus)
        vram = "; ".join(f"{g.memory_free_gb:g} GB free of {g.memory_total_gb:g} GB" for g in env.gpus)
        if env.vram_needed_gb:
            vram += f" (this run needs about {env.vram_needed_gb * 1.2:.1f} GB with the 20% margin)"
    else:
        gpu, vram = "none found", "n/a"
    driver = env.driver or "not found"
    if env.cuda_driver:
        driver += f" (runs CUDA up to {env.cuda_driver})"
    cuda = f"PyTorch built for CUDA {env.torch_cuda}" if env.torch_cuda else "none (CPU-only PyTorch)"
    needs = ", ".join(f"{d.item} {d.gb:g} GB" for d in env.disk_needs)
    if env.backend_missing:
        backend = f"{env.backend}, not ready ({env.backend_missing})"
    else:
        backend = f"{env.backend}, installed ({env.backend_location})"
    computes = env.cuda_available and not env.gpu_compute_error
    return [
        f"- GPU: {gpu}",
        f"- VRAM: {vram}",
        f"- Driver: {driver}",
        f"- CUDA: {cuda}",
        f"- PyTorch: {env.torch_version} (computes on the GPU: {'yes' if computes else 'no'})",
        f"- cuDNN: {env.cudnn or 'none'}",
        f"- Disk: {env.disk_free_gb:g} GB free at {env.folder}; this run needs about {env.disk_need_gb:g} GB ({needs})",
        f"- Backend: {backend}",
    ]


def problem_lines(env: Environment) -> list[str]:
    """Each problem with its fix, numbered; warnings are marked as not blocking."""
    return [
        f"{i}. {'' if p.blocking else '(warning, not blocking) '}{p.problem} Fix: {p.fix}"
        for i, p in enumerate(env.problems, 1)
    ] or ["- None found."]


def render(env: Environment, gate: Gate3, name: str) -> str:
    decision = "GO" if gate.passed else "NO-GO"
    return "\n".join(
        [
            f"# Environment: {name}",
            "",
            *fact_lines(env),
            "",
            "## Problems and fixes",
            *problem_lines(env),
            "",
            f"## Gate 3 Decision: {decision}",
            gate.summary,
            "",
        ]
    )


async def decide(env: Environment, project: Project | None, store: Store | None = None) -> Gate3:
    """Judge ``env``; with a project, write its ``environment.md`` and record Gate 3 in ``store``."""
    gate = judge(env)
    if project is not None:
        project.write("environment.md", render(env, gate, project.name))
        if store is not None:
            gpu = env.gpus[0] if env.gpus else None
            details = {"summary": gate.summary, "problems": [p.model_dump() for p in gate.problems],
                       "gpu": gpu and gpu.name, "vram_gb": gpu and gpu.memory_total_gb}  # fmt: skip
            await store.record_gate(project.name, 3, gate.passed, gate.fingerprint, details)
    return gate


async def probe_project(settings: Settings, project: Project, store: Store, backend: str | None = None) -> Environment:
    """This machine, probed for the project as its settings stand: their trainer (or ``backend``), base model
    and memory estimate, its family and picture count."""
    intent = intents.load(project)
    config = (await store.gate(project.name, 2) or {}).get("details", {})
    backend = backend or config.get("backend") or str(default_backend(intent.family))
    pictures = len(list_files(project.dataset_dir)) if project.dataset_dir.is_dir() else 0
    return await asyncio.to_thread(probe, backend, model_size_gb(config.get("model")), pictures, settings.grimoire,
                                   family=intent.family, vram_needed_gb=config.get("estimate_gb"))  # fmt: skip

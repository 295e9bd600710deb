"""Gate 4, the dry run: the configured trainer really loads the model, reads the dataset and takes a
few training steps — the cheapest way to find a wrong path, an unreadable caption or a memory limit
before hours of GPU time are booked.

The trainer runs as a subprocess (as real training will), printing JSON lines; a crash or an
out-of-memory error is caught, not fatal. On out of memory the batch is halved and the run tried
again, up to three times, each change said in plain words. The result is recorded with a fingerprint
of everything it depended on (Gates 1–3 and the config), so changing any of them voids it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from core.errors import UserError
from core.grimoire import Project, write_atomic
from core.store import Store

STEPS = 3  # the seed's 2–5 real steps
RETRIES_ON_OOM = 3
DIAGNOSIS = {  # what each failure the trainer reports means, and what to do
    "model_not_found": "The base model wasn't found where the config points. Check the path given with "
    "'loratrain config NAME --model PATH' (a diffusers folder or a .safetensors checkpoint).",
    "model_load_failed": "The base model is there but couldn't be loaded: the file may be incomplete or for "
    "another architecture. Download it again, or check it matches the base model family.",
    "caption_missing": "A picture has no caption. Finish the captions ('loratrain caption NAME') first.",
    "trigger_missing": "A caption doesn't start with the trigger word. Edit it so the trigger comes first.",
    "out_of_memory": "The graphics card ran out of memory even at batch size 1. Turn on gradient checkpointing, "
    "use the 8-bit optimizer or a lower resolution (resources/environment/vram-calculator.md).",
    "nan_loss": "The training loss became NaN (not a number): the learning rate is too high or fp16 overflowed. "
    "Lower the learning rate or use bf16 (resources/training/failure-modes.md).",
    "bad_config": "The training settings file is not usable. Write it again with 'loratrain config NAME'.",
}


class Gate4(BaseModel):
    passed: bool
    summary: str  # "Dry run passed — model loaded, 3 steps completed, no errors" or the diagnosis
    adjustments: list[str]  # each out-of-memory recovery, in plain words
    steps: int
    fingerprint: str


async def _run(config: Path) -> tuple[int, list[dict]]:
    """Run the built-in trainer on ``config``; its exit code and the JSON events it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.training.builtin", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    events = []
    assert process.stdout is not None
    async for line in process.stdout:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a library's own print, not one of the trainer's events
    return await process.wait(), events


def inputs_fingerprint(gates: dict[int, dict | None], config: dict) -> str:
    """What the dry run depended on: the fingerprints Gates 1–3 were decided on, and its config."""
    parts = {n: (gates.get(n) or {}).get("fingerprint") for n in (1, 2, 3)}
    return hashlib.sha256(json.dumps([parts, config], sort_keys=True).encode()).hexdigest()


async def dry_run(project: Project, store: Store) -> Gate4:
    config_gate = await store.gate(project.name, 2)
    if config_gate is None:
        raise UserError(f"There are no training settings yet. Write them first: loratrain config {project.name} ...")
    backend = config_gate["details"]["backend"]
    if backend != "builtin":
        raise UserError(
            f"This release runs the dry run with the built-in trainer only; {backend} dry runs come with its "
            f"launcher. Write a built-in config to check the dataset and model: loratrain config {project.name} "
            "--backend builtin ..."
        )
    config = json.loads(Path(config_gate["details"]["files"][0]).read_text(encoding="utf-8"))
    config.update(max_steps=STEPS, output=str(project.root / "dryrun"), save_every_n_epochs=0)
    gates = {n: await store.gate(project.name, n) for n in (1, 2, 3)}
    adjustments: list[str] = []
    for _ in range(RETRIES_ON_OOM + 1):
        path = project.root / "config" / "dryrun.json"
        write_atomic(path, json.dumps(config, indent=2))
        code, events = await _run(path)
        error = next((e for e in events if e.get("event") == "error"), None)
        if error and error.get("kind") == "out_of_memory" and config["batch_size"] > 1:
            smaller = config["batch_size"] // 2
            adjustments.append(f"Hit the memory limit — reducing batch size from {config['batch_size']} to {smaller} "
                               "and retrying.")  # fmt: skip
            config["batch_size"] = smaller
            continue
        break
    done = next((e for e in events if e.get("event") == "done"), None)
    steps = sum(1 for e in events if e.get("event") == "step")
    if code == 0 and done and steps >= 2:
        summary = f"Dry run passed — model loaded, {steps} steps completed, no errors."
    elif error:
        summary = f"Dry run failed — {error.get('message', '')} {DIAGNOSIS.get(error.get('kind', ''), '')}".strip()
    else:
        summary = f"Dry run failed — the trainer stopped after {steps} step(s) without saying why (exit code {code})."
    gate = Gate4(passed=summary.startswith("Dry run passed"), summary=summary, adjustments=adjustments, steps=steps,
                 fingerprint=inputs_fingerprint(gates, config))  # fmt: skip
    await store.record_gate(project.name, 4, gate.passed, gate.fingerprint,
                            {"summary": summary, "adjustments": adjustments, "steps": steps,
                             "inputs": {n: (g or {}).get("fingerprint") for n, g in gates.items()}})  # fmt: skip
    project.write("status.md", _status(project, gate))
    return gate


def _status(project: Project, gate: Gate4) -> str:
    lines = [f"# Status: {project.name}", f"- **Gate 4 (dry run)**: {'PASSED' if gate.passed else 'FAILED'}",
             f"- **Result**: {gate.summary}"]  # fmt: skip
    lines += [f"- **Memory recovery**: {a}" for a in gate.adjustments]
    return "\n".join(lines) + "\n"

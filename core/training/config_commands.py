"""The ``vram`` and ``config`` subcommands, added to ``loratrain``'s parser by ``add_parsers``.

Like the rest of the terminal adapter they parse, call the capability, and print plain words (or
JSON); the decisions are in ``vram`` and ``gate2``.
"""

from __future__ import annotations

import argparse
import json

from core import intent as intents
from core.dataset.audit import list_files
from core.families import Family
from core.grimoire import Project
from core.settings import Settings
from core.store import open_store
from core.training import gate2, params, vram
from core.training.configs import Backend


def cmd_vram(settings: Settings, args: argparse.Namespace) -> None:
    available = args.available if args.available is not None else vram.detect_available_gb()
    result = vram.estimate(
        Family(args.model),
        args.resolution,
        args.batch,
        args.rank,
        params.Optimizer(args.optimizer),
        args.precision,
        args.gradient_checkpointing,
        args.cache_text_encoder,
        available,
        backend=Backend(args.backend),
    )
    if args.json:
        print(json.dumps(result.required_keys()))
        return
    print(f"Estimated graphics memory: {result.estimate_gb:.1f} GB")
    for part, gb in result.breakdown.items():
        print(f"  {part.replace('_', ' ')}: {gb:.2f} GB")
    if available is None:
        print("No graphics card found here: give its memory with --available GB to check the fit.")
    elif result.fits:
        print(
            f"Fits {available:g} GB with the 20% safety margin; "
            f"the largest batch that fits is {result.recommended_batch}."
        )
    elif result.recommended_batch:
        print(
            f"Too much for {available:g} GB with the 20% margin at batch {args.batch}; batch "
            f"{result.recommended_batch} fits."
        )
    else:
        print(f"Too much for {available:g} GB even at batch 1 with the 20% margin. Next steps, in order:")
        print("\n".join(f"  {i}. {lever}" for i, lever in enumerate(result.levers, 1)))
    print(f"(How this is worked out: resources/{vram.CALCULATOR_FILE})")


def _pictures(project: Project) -> int:
    return len(list_files(project.dataset_dir)) if project.dataset_dir.is_dir() else 0


async def cmd_config(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name)
    optimizer = params.Optimizer(args.optimizer) if args.optimizer else params.Optimizer.adamw8bit
    available = args.available if args.available is not None else vram.detect_available_gb()
    overrides = {"rank": args.rank, "batch_size": args.batch, "resolution": args.resolution,
                 "learning_rate": args.learning_rate, "epochs": args.epochs, "repeats": args.repeats}  # fmt: skip
    async with open_store(settings.database_path) as store:
        result = await gate2.configure_preset(
            project, intents.load(project), store, params.Preset(args.preset), Backend(args.backend), args.model,
            available, optimizer, **overrides,
        )  # fmt: skip
    if result.gate.passed:
        print("Gate 2 (config): GO — the settings fit your GPU and every value is in its safe range.")
    else:
        print("Gate 2 (config): NO-GO — fix these, then run this command again:")
        print("\n".join(f"  {i}. {reason}" for i, reason in enumerate(result.gate.reasons, 1)))
    print(f"Config: {', '.join(result.files)}")
    print(f"Record: {result.record}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    families = [f.value for f in Family]
    optimizers = [o.value for o in params.Optimizer]

    p = sub.add_parser("vram", help="estimate the graphics memory a LoRA run needs")
    p.add_argument("--model", required=True, choices=families, help="base model family")
    p.add_argument("--resolution", type=int, required=True, help="training size in pixels")
    p.add_argument("--batch", type=int, default=1, help="pictures per step")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (dim)")
    p.add_argument("--optimizer", choices=optimizers, default="adamw8bit", help="optimiser")
    p.add_argument("--precision", choices=sorted(vram.WEIGHT_BYTES), default="bf16", help="number format")
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recompute working results to save memory",
    )
    p.add_argument("--cache-text-encoder", action="store_true", help="text encoders' outputs cached beforehand")
    p.add_argument("--available", type=float, help="the GPU's free memory in GB (default: this machine's GPU)")
    p.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default=Backend.kohya.value,
        help="which trainer runs it: its LoRA layers set the LoRA's size (default: kohya)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_vram)

    p = sub.add_parser("config", help="write the training config files and config.md, and decide Gate 2")
    p.add_argument("name", help="project name")
    p.add_argument("--backend", required=True, choices=[b.value for b in Backend], help="which trainer runs it")
    p.add_argument("--preset", choices=[x.value for x in params.Preset], default="standard", help="how long to train")
    p.add_argument("--model", help="base model file, folder or Hugging Face name (default: the family's public one)")
    p.add_argument("--available", type=float, help="the GPU's free memory in GB (default: this machine's GPU)")
    p.add_argument("--rank", type=int, help="LoRA rank (dim); alpha follows at half of it")
    p.add_argument("--batch", type=int, help="pictures per step")
    p.add_argument("--resolution", type=int, help="training size in pixels")
    p.add_argument("--learning-rate", type=float, help="learning rate")
    p.add_argument("--optimizer", choices=optimizers, help="optimiser (its starting learning rate comes with it)")
    p.add_argument("--epochs", type=int, help="passes over the pictures (overrides the preset)")
    p.add_argument("--repeats", type=int, help="times each picture is shown per pass (default: from the picture count)")
    p.set_defaults(run=cmd_config)

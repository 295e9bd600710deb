"""Terminal commands for the training package; ``core.cli`` adds them with ``add_parsers``."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.settings import Settings


def cmd_tiny_model(settings: Settings, args: argparse.Namespace) -> None:
    from core.training.tiny import build_tiny_model, folder_size  # torch and diffusers load only when used

    folder = build_tiny_model(Path(args.dir), args.arch)
    print(f"Wrote a tiny {args.arch.upper()} model to {folder} ({folder_size(folder) / 1e6:.1f} MB).")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random-weight model to test training offline")
    p.add_argument("dir", help="folder to write the diffusers pipeline to")
    p.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15", help="model layout (default: sd15)")
    p.set_defaults(run=cmd_tiny_model)

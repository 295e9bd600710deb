"""What a rented GPU holds and runs: loratrain itself, one project, its base model, and the trainer.

The rented machine is a loratrain node of its own: the same code runs the same gates there (Gate 1 on the
uploaded pictures and decisions, Gate 2 for the rented card's memory, Gate 3 on its GPU and drivers, Gate 4
as a real dry run) and then trains, so nothing is judged on one machine and spent on another.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

import core
from core.resources import ROOT as RESOURCES
from core.training.configs import Backend

CODE = (Path(core.__file__).parent, RESOURCES)  # what loratrain needs there: its package and reference files
# Distributions the rented machine gets from its image (torch, built for its CUDA) or never needs (the bot).
NOT_REMOTE = {"torch", "discord-py"}
# The trainers cloned and installed as their READMEs say (resources/backends/*-adapter.md: clone, then
# requirements.txt), with the variable that tells loratrain's probe where each one is. SimpleTuner is a
# PyPI package instead (it needs Python 3.12 or newer: an image with it, in LORATRAIN_CLOUD_IMAGE).
TRAINERS = {
    Backend.kohya: ("LORATRAIN_KOHYA_DIR", "sd-scripts", "https://github.com/kohya-ss/sd-scripts.git"),
    Backend.ai_toolkit: ("LORATRAIN_AI_TOOLKIT_DIR", "ai-toolkit", "https://github.com/ostris/ai-toolkit.git"),
}


def requirements() -> dict[str, str]:
    """loratrain's own requirements that a rented machine must have, name → requirement (never torch: the
    image's CUDA build must stay, a PyPI one could need a newer driver than the host has)."""
    wanted = {}
    for text in metadata.requires("loratrain") or []:
        req = Requirement(text)
        if not req.marker and req.name.lower().replace(".", "-").replace("_", "-") not in NOT_REMOTE:
            wanted[req.name] = str(req)
    return wanted


@dataclass(frozen=True)
class Layout:
    """Where things live under the remote folder (``LORATRAIN_CLOUD_REMOTE_DIR``)."""

    root: str
    python: str

    def at(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    @property
    def app(self) -> str:
        return self.at("app")

    @property
    def grimoire(self) -> str:
        return self.at("grimoire")

    def project(self, name: str) -> str:
        return self.at("grimoire", "training", name)

    def model(self, local: Path) -> str:
        return self.at("models", local.name)

    def environment(self) -> dict[str, str]:
        trainers = {variable: self.at("trainers", folder) for variable, folder, _ in TRAINERS.values()}
        return {"PYTHONPATH": self.app, "LORATRAIN_GRIMOIRE": self.grimoire, "HF_HOME": self.at("hf"),
                "PYTHONUNBUFFERED": "1", **trainers}  # fmt: skip

    def loratrain(self, *args: str) -> str:
        """A ``loratrain`` command line run there, with the remote folder's settings."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.environment().items())
        command = " ".join(shlex.quote(a) for a in (self.python, "-m", "core.cli", *args))
        return f"mkdir -p {shlex.quote(self.root)} && cd {shlex.quote(self.root)} && env {env} {command}"

    def missing(self, names: list[str]) -> str:
        """A command printing, as JSON, which of these distributions are not installed there."""
        script = (
            "import json, sys\nfrom importlib import metadata\ndef has(name):\n    try:\n"
            "        return bool(metadata.version(name))\n    except metadata.PackageNotFoundError:\n"
            "        return False\nprint(json.dumps([n for n in json.loads(sys.argv[1]) if not has(n)]))"
        )
        return " ".join(shlex.quote(a) for a in (self.python, "-c", script, json.dumps(names)))

    def pip_install(self, packages: list[str]) -> str:
        return " ".join(shlex.quote(a) for a in (self.python, "-m", "pip", "install", "-q", *packages))

    def install_trainer(self, backend: Backend) -> str | None:
        """The trainer's installation, or None for the built-in one (loratrain's own requirements)."""
        if backend == Backend.simpletuner:
            return self.pip_install(["simpletuner[cuda]"])
        if backend not in TRAINERS:
            return None
        _, folder, repository = TRAINERS[backend]
        where = self.at("trainers", folder)
        folder, python = shlex.quote(where), shlex.quote(self.python)
        return (f"[ -d {folder}/.git ] || git clone --depth 1 {repository} {folder}; "
                f"cd {folder} && {python} -m pip install -q -r requirements.txt")  # fmt: skip

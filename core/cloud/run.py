"""A training run on a rented GPU, from the rental to the teardown.

The order is the seed's: rent, wait until it answers SSH, put loratrain there, install what is missing,
deploy the project, pass the four gates there, train detached (followed from home through its log), draw
the strength grid while the GPU is still there, bring everything home, and destroy the machine — in a
``finally``, so an error or a Cancel still ends the billing. Each finished step is recorded with the
instance, so after a dropped connection (or a restarted job) nothing done is done again. The spending cap
is checked before the rental (the estimate) and all along (the cost so far).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import ValidationError

from core import intent as intents
from core.cloud import ledger
from core.cloud.cost import Estimate, about, spent
from core.cloud.providers import CloudError, Instance, Provider
from core.cloud.reaper import give_back
from core.cloud.remote import CODE, Layout, requirements
from core.cloud.ssh import Remote, ensure_key
from core.dataset.snapshot import take
from core.errors import UserError
from core.gates import ledger as gate_ledger
from core.grimoire import Project
from core.settings import Settings
from core.store import Store
from core.training.configs import Backend
from core.training.execute import THIS_WORKER, Note, Result, alive
from core.training.progress import ProgressState

POLL_S = 5.0  # how often the training log is read from home
READY_POLL_S = 5.0  # how often the provider is asked whether the instance is up
HEARTBEAT_S = 60.0  # how often a run says it still drives its instance (the reaper's QUIET_S is far longer)
GATE_COMMANDS = (("report",), ("config",), ("env",), ("dryrun",))
# What comes home: the LoRA and its checkpoints, the trainer's log, the grid, and the remote's records.
RESULTS = ("checkpoints", "logs", "eval")
RECORDS = ("progress.md", "status.md", "environment.md", "config.md", "dataset-report.md")

Report = Callable[[ProgressState | Note], Awaitable[None]]


class Stopped(CloudError):
    """The run was stopped on purpose (the artist's Cancel, the spending cap) before training began."""


async def cloud_plan(settings: Settings, project: Project, store: Store) -> dict:
    """Gate 2's record, after checking what a cloud run needs from home: the dataset passes Gate 1 today, and
    settings were chosen (Gates 2–4 are decided again on the rented card, for its memory and drivers)."""
    snapshot = await take(project, intents.load(project), settings, store)  # this machine's GPU doesn't matter
    gate1 = (await gate_ledger(project.name, store, {1: snapshot.fingerprint()}))[0]
    if gate1.state != "passed":
        raise UserError(f"Renting a GPU waits for Gate 1 (dataset), which is {gate1.state} — {gate1.why}. "
                        f"Check the dataset first (`loratrain report {project.name}`).")  # fmt: skip
    config = await store.gate(project.name, 2)
    if config is None:
        raise UserError(f"Choose {project.name}'s settings first (`loratrain config {project.name}`, or a preset in "
                        "the conversation): the rented card is chosen to fit them.")  # fmt: skip
    return config["details"]


class CloudRun:
    """One project's run on one rented instance; ``run_id`` ties the instance, the run and the job together."""

    def __init__(self, settings: Settings, project: Project, store: Store, provider: Provider, report: Report,
                 run_id: str, session: str | None = None) -> None:  # fmt: skip
        self.settings, self.project, self.store, self.provider = settings, project, store, provider
        self.report, self.run_id, self.session = report, run_id, session
        self.layout = Layout(settings.cloud_remote_dir, settings.cloud_remote_python)
        self.instance: dict | None = None
        self.remote: Remote | None = None

    # The instance ------------------------------------------------------------------------------

    async def rent(self, estimate: Estimate, backend: str, config: str) -> None:
        """Rent ``estimate.offer`` (or take up this run's instance again, when a job is retried)."""
        if not estimate.within_cap:
            raise UserError(f"This run would cost about ${estimate.usd:.2f}, more than your cap of "
                            f"${estimate.cap_usd:.2f} (LORATRAIN_CLOUD_MAX_USD). Choose a cheaper card, the Quick "
                            "preset, or raise the cap.")  # fmt: skip
        mine = await self.store.instances(run=self.run_id)
        if mine and mine[-1]["status"] == "TERMINATED":
            raise UserError("The GPU rented for this run was already given back (its run had stopped), so nothing "
                            "more is spent without asking: start the cloud run again to rent a new one.")  # fmt: skip
        await self.store.start_run(self.run_id, self.project.name, backend, config, None, THIS_WORKER)
        if mine:  # a retried job takes its instance up again: the reaper must see this worker drive it now
            self.instance = mine[-1]
            await self._step(None, worker=THIS_WORKER)
            return
        offer = estimate.offer
        key = ensure_key(self.settings.cloud_dir / "id_ed25519")
        label = f"loratrain-{self.run_id}"
        instance_id = await asyncio.to_thread(self.provider.create, offer, image=self.settings.cloud_image,
                                              disk_gb=offer.disk_gb or 0, public_key=key, label=label)  # fmt: skip
        await self.store.add_instance(self.provider.name, instance_id, self.project.name, self.run_id, offer.gpu,
                                      offer.usd_per_hour, estimate.cap_usd, THIS_WORKER, self.session)  # fmt: skip
        self.instance = (await self.store.instances(run=self.run_id))[-1]
        await self._step(None, vram_gb=offer.vram_gb)
        self._record()
        await self.report(Note(text=f"Rented {offer.gpu} on {self.provider.title} (instance {instance_id}) at "
                                    f"${offer.usd_per_hour:.2f}/hour. It bills until I destroy it, which I do as soon "
                                    "as your results are safe here.", ping=True))  # fmt: skip

    async def teardown(self) -> None:
        """Destroy the instance and say so; a failure is told plainly and left to the reaper, which retries."""
        if self.instance is None:
            return
        if self.remote:
            await asyncio.to_thread(self.remote.close)
        try:
            self.instance, cost = await give_back(self.settings, self.store, self.provider, self.instance)
        except CloudError as err:
            await self.report(Note(text=f"⚠️ I could not destroy instance {self.instance['id']} on "
                                        f"{self.provider.title}: {err} I'll keep trying every few minutes; you can "
                                        "also destroy it in their console.", ping=True))  # fmt: skip
            return
        gpu, instance_id = self.instance["gpu"], self.instance["id"]
        await self.report(Note(text=f"Destroyed the {gpu} on {self.provider.title} (instance {instance_id}); it cost "
                                    f"{about(cost)} in all.", ping=True))  # fmt: skip

    def _record(self) -> None:
        """The instance's line in studio.md, as it stands."""
        ledger.record(self.settings.grimoire, [self.instance])

    async def heartbeat(self) -> None:
        """Keep telling the reaper this instance is driven, through long uploads and installs too."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if self.instance is not None:
                await self.store.touch_instance(self.provider.name, self.instance["id"])

    def _done(self, step: str) -> bool:
        return step in self.instance["steps"]

    async def _step(self, step: str | None, worker: str | None = None, **details: object) -> None:
        await self.store.touch_instance(self.provider.name, self.instance["id"], step, worker, **details)
        self.instance = (await self.store.instances(run=self.run_id))[-1]

    # On the machine ----------------------------------------------------------------------------

    async def connect(self) -> None:
        ready: Instance = await asyncio.to_thread(self.provider.wait_ready, self.instance["id"],
                                                  self.settings.cloud_ready_timeout, READY_POLL_S)  # fmt: skip
        known = self.settings.cloud_dir / f"known_hosts-{self.provider.name}-{self.instance['id']}"
        self.remote = Remote(ready.ssh_host, ready.ssh_port, self.settings.cloud_ssh_user,
                             self.settings.cloud_dir / "id_ed25519", known)  # fmt: skip
        await asyncio.to_thread(self.remote.connect)
        await self._step("ready", ssh=f"{ready.ssh_host}:{ready.ssh_port}")

    async def _run(self, command: str, check: bool = True) -> tuple[int, str]:
        return await asyncio.to_thread(self.remote.run, command, None, check)

    async def install(self, backend: str) -> None:
        """loratrain's code, then whatever of its requirements (and the trainer) the image lacks."""
        if self._done("installed"):
            return
        for folder in CODE:
            await asyncio.to_thread(self.remote.upload, folder, self.layout.at("app", folder.name))
        wanted = requirements()
        _, out = await self._run(self.layout.missing(list(wanted)))
        missing = [wanted[name] for name in json.loads(out.strip().splitlines()[-1])]
        if missing:
            await self.report(Note(text=f"Installing what the rented machine lacks: {', '.join(missing)}."))
            await self._run(self.layout.pip_install(missing))
        trainer = self.layout.install_trainer(Backend(backend))
        if trainer:
            await self.report(Note(text=f"Installing {backend} on the rented machine."))
            await self._run(trainer)
        await self._step("installed")

    async def deploy(self, model: str | None) -> str | None:
        """The pictures, captions and decisions (and the base model when it is a file here); returns the
        model's name as the rented machine knows it."""
        local_model = Path(model) if model and Path(model).exists() else None
        remote_model = self.layout.model(local_model) if local_model else model
        if self._done("deployed"):
            return remote_model
        remote_project = self.layout.project(self.project.name)
        await self._run(f"mkdir -p {shlex.quote(remote_project)}")
        for item in sorted(self.project.root.iterdir()):
            if item.is_file() or item.name == "dataset":
                await asyncio.to_thread(self.remote.upload, item, f"{remote_project}/{item.name}")
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / ".loratrain.sqlite3"
            await self.store.export_project(self.project.name, copy)
            await asyncio.to_thread(self.remote.upload, copy, self.layout.at("grimoire", copy.name))
        if local_model:
            await self.report(Note(text=f"Uploading the base model ({local_model.name}); this is the slow part."))
            await asyncio.to_thread(self.remote.upload, local_model, remote_model)
        await self._step("deployed")
        return remote_model

    async def gates(self, params: dict, backend: str, model: str | None) -> None:
        """The four gates on the rented machine, one after the other; the first that fails ends the run."""
        if self._done("gates"):
            return
        config = ["--preset", params["preset"], "--backend", backend, "--optimizer", params["optimizer"],
                  "--rank", str(params["rank"]), "--batch", str(params["batch_size"]),
                  "--resolution", str(params["resolution"]), "--learning-rate", str(params["learning_rate"]),
                  "--epochs", str(params["epochs"]), "--repeats", str(params["repeats"]),
                  "--available", str(self.instance["details"]["vram_gb"]),
                  *(["--model", model] if model else [])]  # fmt: skip
        name = self.project.name
        for number, (command,) in enumerate(GATE_COMMANDS, 1):
            _, out = await self._run(self.layout.loratrain(command, name, *(config if number == 2 else [])), False)
            _, states = await self._run(self.layout.loratrain("gates", name, "--json"))
            state = json.loads(states.strip().splitlines()[-1])[number - 1]
            if state["state"] != "passed":
                last = "\n".join(out.strip().splitlines()[-6:])
                raise CloudError(f"Gate {number} ({state['name']}) did not pass on the rented {self.instance['gpu']}: "
                                 f"{state['why']}.\nWhat it said:\n{last}")  # fmt: skip
            await self.report(Note(text=f"Gate {number} ({state['name']}) passed on the rented "
                                        f"{self.instance['gpu']}."))  # fmt: skip
        await self._step("gates")

    async def train(self, should_stop: Callable[[], Awaitable[str | None]]) -> dict:
        """Training, detached there and followed from here; ``should_stop`` says why to stop (a Cancel, the
        cap) or None. Returns the remote's result (``execute.Result`` as JSON)."""
        workdir = self.layout.at("run")
        await self._run(f"mkdir -p {shlex.quote(workdir)}")
        command = self.layout.loratrain("train", self.project.name, "--yes", "--json")
        await asyncio.to_thread(self.remote.launch, command, workdir, "train")
        offset, partial, result, stopping = int(self.instance["details"].get("offset", 0)), "", None, False
        while True:
            chunk, offset = await asyncio.to_thread(self.remote.read_log, workdir, "train", offset)
            lines = (partial + chunk.decode("utf-8", "replace")).split("\n")
            partial = lines.pop()
            for line in lines:
                result = await self._relay(line) or result
            await self._step(None, offset=offset - len(partial.encode()))
            rc = await asyncio.to_thread(self.remote.exit_code, workdir, "train")
            if rc is not None:
                if result is None:
                    raise CloudError(f"Training on the rented machine stopped without a result (exit code {rc}). "
                                     "Its log comes home with the rest, under logs/.")  # fmt: skip
                return result
            why = await should_stop()
            if why and not stopping:
                stopping = True
                await self.report(Note(text=why, ping=True))
                await asyncio.to_thread(self.remote.stop, workdir, "train")
            await asyncio.sleep(POLL_S)

    async def _relay(self, line: str) -> dict | None:
        """One line of the remote ``train --json``: progress and notes go to the artist, the result is kept."""
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(item, dict):
            return None
        try:
            if "progress" in item:
                await self.report(ProgressState.model_validate(item["progress"]))
            elif "note" in item:
                note = Note.model_validate(item["note"])
                await self.report(note.model_copy(update={"picture": await self._fetch(note.picture)}))
        except ValidationError:
            return None
        return item.get("result")

    async def _fetch(self, remote: str | None) -> str | None:
        """A picture the remote run mentions (the loss curve), brought home to the same place in the project."""
        if not remote:
            return None
        local = self.here(remote)
        await asyncio.to_thread(self.remote.download, remote, local)
        return str(local)

    def here(self, remote: str) -> Path:
        """The local path of a file in the remote project."""
        relative = Path(remote).relative_to(self.layout.project(self.project.name))
        return self.project.root / relative

    async def evaluate(self) -> dict:
        """The strength grid, drawn while the GPU is still rented (a real base model is slow on anything less),
        with its pictures' paths as they will be here."""
        steps = str(self.settings.eval_steps)
        _, out = await self._run(self.layout.loratrain("eval", self.project.name, "--json", "--steps", steps))
        evaluation = json.loads(out.strip().splitlines()[-1])
        for key in ("grid", "checkpoints"):  # the pictures; "checkpoint" is a file name, the same here
            evaluation[key] = str(self.here(evaluation[key])) if evaluation.get(key) else None
        return evaluation

    async def bring_home(self) -> None:
        """Checkpoints, logs, grids and the remote's records into the project here."""
        remote_project = self.layout.project(self.project.name)
        listing = " ".join(shlex.quote(f"{remote_project}/{n}") for n in (*RESULTS, *RECORDS))
        _, out = await self._run(f"ls -d {listing} 2>/dev/null || true")
        for path in out.split():
            await asyncio.to_thread(self.remote.download, path, self.here(path))
        await self.report(Note(text=f"Your results are home, in {self.project.root}."))


async def train_in_cloud(settings: Settings, project: Project, store: Store, provider: Provider, estimate: Estimate,
                         report: Report, *, run_id: str,
                         session: str | None = None) -> tuple[Result, dict | None]:  # fmt: skip
    """Rent ``estimate.offer``, train ``project`` there, draw its strength grid there, bring the results home,
    and always destroy the instance. Returns the run's result and the grid's (``evaluate.Evaluation`` as JSON,
    with paths here; None when the run did not finish)."""
    details = await cloud_plan(settings, project, store)
    previous = await store.latest_run(project.name)
    if previous and previous["status"] == "running" and previous["id"] != run_id and alive(previous):
        raise UserError(f"{project.name} is already training; stop it first with `loratrain cancel {project.name}`.")
    run = CloudRun(settings, project, store, provider, report, run_id, session)
    progress = str(project.path("progress.md"))

    async def should_stop() -> str | None:
        """Why the run must stop now (the cap reached, the artist's Cancel), or None."""
        await store.touch_run(run_id)
        cost = spent(run.instance["usd_per_hour"], run.instance["started_at"])
        if cost >= run.instance["cap_usd"]:
            return (f"This run has cost ${cost:.2f}, your cap (LORATRAIN_CLOUD_MAX_USD): stopping here and keeping "
                    "what is done.")  # fmt: skip
        if await store.cancel_requested(run_id):
            return "Stopping as you asked; what is done is kept."
        return None

    async def guard() -> None:
        if why := await should_stop():
            raise Stopped(why)

    beat = asyncio.create_task(run.heartbeat())
    try:
        await run.rent(estimate, details["backend"], json.dumps(details["params"], sort_keys=True))
        await run.connect()
        await guard()
        await run.install(details["backend"])
        await guard()
        model = await run.deploy(details.get("model"))
        await guard()
        await run.gates(details["params"], details["backend"], model)
        await guard()
        outcome = Result.model_validate(await run.train(should_stop))
        evaluation = await run.evaluate() if outcome.status == "finished" else None
        await run.bring_home()
        await store.end_run(run_id, outcome.status, {"message": outcome.message, "cloud": provider.name})
        lora = str(run.here(outcome.lora)) if outcome.lora else None
        curve = str(run.here(outcome.curve)) if outcome.curve else None
        message = outcome.message.replace(run.layout.project(project.name), str(project.root))
        update = {"message": message, "lora": lora, "curve": curve, "progress": progress}
        return outcome.model_copy(update=update), evaluation
    except (UserError, OSError) as err:
        status = "cancelled" if isinstance(err, Stopped) else "failed"
        await store.end_run(run_id, status, {"message": str(err), "cloud": provider.name})
        if isinstance(err, UserError) and run.instance is None:
            raise
        message = str(err) if isinstance(err, UserError) else f"The connection to the rented machine failed ({err})."
        return Result(status=status, message=message, progress=progress), None
    finally:
        beat.cancel()
        await run.teardown()

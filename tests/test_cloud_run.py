"""A cloud run end to end: the real provider client against a local server speaking Vast.ai's API, a real
OpenSSH server on loopback standing in for the rented machine (loratrain runs there for real, on the tiny
model), and the reaper for what a run could not tear down itself."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.cloud import run as cloud_run
from core.cloud.cost import estimate
from core.cloud.providers import Offer, provider
from core.cloud.reaper import reap
from core.families import Family
from core.store import open_store


def quote(settings, usd_per_hour=0.45, cap=None, steps=12):
    """The estimate the artist confirmed, for the fake's first offer (the project trains 12 steps at batch 5)."""
    offer = Offer(provider="vast", id="101", gpu="RTX 4090", vram_gb=24, usd_per_hour=usd_per_hour, disk_gb=40)
    return estimate(offer, Family.sd15, steps, 5, 512, 0.0, cap or settings.cloud_max_usd)


async def test_a_run_on_a_rented_gpu_passes_the_gates_there_trains_brings_results_home_and_destroys_it(
    cloud, configured, vast, sshd
):
    said = []

    async def report(item):
        if not hasattr(item, "text") and not any(s.startswith("Training") for s in said):
            sshd.cut()  # the connection drops as training starts: the run reconnects and follows on
        said.append(item.text if hasattr(item, "text") else item.title())

    async with open_store(cloud.database_path) as store:
        result, grid = await cloud_run.train_in_cloud(cloud, configured, store, provider(cloud, "vast"), quote(cloud),
                                                      report, run_id="pots-cloud-1")  # fmt: skip
        instances = await store.instances()
    assert result.status == "finished", result.message + "\n" + "\n".join(said)
    text = "\n".join(said)
    for gate in ("Gate 1 (Dataset) passed", "Gate 2 (Config) passed", "Gate 3 (Environment) passed",
                 "Gate 4 (Dry run) passed"):  # fmt: skip
        assert gate in text, text
    assert "Rented RTX 4090 on Vast.ai" in said[0] and "Destroyed the RTX 4090" in said[-1]
    assert text.count("Gate 1 (Dataset) passed") == 1 and sshd.logins() > 1  # reconnected, nothing done twice
    # the LoRA, the checkpoint, the log, the grid and the records are home, where the project keeps them
    home = configured.root
    assert Path(result.lora) == home / "checkpoints" / "pots.safetensors" and Path(result.lora).is_file()
    assert (home / "logs" / "train.log").is_file() and (home / "progress.md").is_file()
    assert grid and Path(grid["grid"]).is_file() and Path(grid["grid"]).is_relative_to(home / "eval")
    assert any(line.startswith("Weight 0.3") for line in grid["comparison"])
    # the instance was destroyed once, and both records say so
    [instance] = instances
    assert vast.destroyed == [instance["id"]] and instance["status"] == "TERMINATED"
    assert set(instance["steps"]) >= {"ready", "installed", "deployed", "gates"}
    studio = (cloud.grimoire / "studio.md").read_text()
    assert f"- **Vast.ai {instance['id']}**: RTX 4090 · $0.45/hour · started" in studio
    assert "TERMINATED" in studio and "project pots" in studio
    # nothing of other projects or of the conversations went to the rented machine
    rented = Path(cloud.cloud_remote_dir)
    assert sorted(p.name for p in (rented / "grimoire" / "training").iterdir()) == ["pots"]


async def test_a_run_that_fails_after_renting_still_destroys_the_instance(cloud, configured, vast):
    broken = cloud.model_copy(update={"cloud_remote_python": "/nowhere/python3"})
    said = []

    async def report(item):
        said.append(item.text)

    async with open_store(broken.database_path) as store:
        result, grid = await cloud_run.train_in_cloud(broken, configured, store, provider(broken, "vast"),
                                                      quote(broken), report, run_id="pots-cloud-2")  # fmt: skip
        [instance] = await store.instances()
        run = await store.latest_run("pots")
    assert result.status == "failed" and grid is None
    assert "/nowhere/python3" in result.message  # the failing command's own words
    assert vast.destroyed == [instance["id"]] and instance["status"] == "TERMINATED"
    assert run["status"] == "failed" and "Destroyed the RTX 4090" in said[-1]


async def test_the_spending_cap_stops_a_run_and_its_instance_is_destroyed(cloud, configured, vast):
    # $3,600 an hour against a $2 cap: an estimate for one step stays under it, the cost so far passes it in 2 s
    said = []

    async def report(item):
        said.append(item.text)

    async with open_store(cloud.database_path) as store:
        result, _ = await cloud_run.train_in_cloud(cloud, configured, store, provider(cloud, "vast"),
                                                   quote(cloud, usd_per_hour=3600, cap=2.0, steps=1), report,
                                                   run_id="pots-cloud-3")  # fmt: skip
        [instance] = await store.instances()
    assert result.status == "cancelled" and "your cap" in result.message
    assert vast.destroyed == [instance["id"]]
    assert not (configured.root / "checkpoints").exists()  # it stopped before training


async def test_an_estimate_over_the_cap_rents_nothing(cloud, configured, vast):
    async with open_store(cloud.database_path) as store:
        with pytest.raises(Exception, match="more than your cap"):
            await cloud_run.train_in_cloud(cloud, configured, store, provider(cloud, "vast"),
                                           quote(cloud, usd_per_hour=10_000, cap=1.0), _ignore,
                                           run_id="pots-cloud-4")  # fmt: skip
        assert await store.instances() == []
    assert not [r for r in vast.requests if r.method == "PUT"]


async def _ignore(_):
    return None


def test_a_worker_killed_after_renting_leaves_an_instance_the_reaper_destroys(cloud, configured, vast, tmp_path):
    vast.ready_after = 10_000  # the instance never comes up: the worker is stuck waiting when it is killed
    chosen = {
        "grimoire": cloud.grimoire,
        "vast_url": vast.url,
        "vast_api_key": vast.key,
        "cloud_remote_dir": cloud.cloud_remote_dir,
        "cloud_ready_timeout": 600,
    }
    env = {**os.environ, **{f"LORATRAIN_{k.upper()}": str(v) for k, v in chosen.items()}}
    command = [sys.executable, "-m", "core.cli", "cloud", "train", "pots", "--provider", "vast", "--yes"]
    worker = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not vast.instances and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vast.instances, worker.communicate(timeout=5)[0]
    time.sleep(0.5)  # recorded right after the rental
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    told = []

    async def tell(instance, text):
        told.append(text)

    async def sweep():
        async with open_store(cloud.database_path) as store:
            assert [i["status"] for i in await store.instances()] == ["RUNNING"]  # the killed worker's leftover
            gone = await reap(cloud, store, lambda name: provider(cloud, name), tell)
            return gone, await store.instances()

    rented = list(vast.instances)
    gone, instances = asyncio.run(sweep())
    assert [i["id"] for i in gone] == vast.destroyed == rented
    assert instances[0]["status"] == "TERMINATED" and "the worker driving it stopped" in told[0]
    assert "TERMINATED" in (cloud.grimoire / "studio.md").read_text()


async def test_the_reaper_leaves_a_driven_instance_alone_and_stops_one_over_its_cap(cloud, configured, vast):
    async with open_store(cloud.database_path) as store:
        await store.start_run("r1", "pots", "builtin", "{}", None, f"{socket.gethostname()}:{os.getpid()}")
        await store.add_instance("vast", "900", "pots", "r1", "RTX 4090", 0.45, 10.0,
                                 f"{socket.gethostname()}:{os.getpid()}", None)  # fmt: skip
        vast.add("loratrain-r1")
        assert await reap(cloud, store, lambda n: provider(cloud, n), _tell_nothing) == []  # alive, under its cap
        await store.db.execute("UPDATE cloud_instances SET started_at = '2026-01-01T00:00:00+00:00'")
        await store.db.commit()
        told = []

        async def tell(instance, text):
            told.append(text)

        gone = await reap(cloud, store, lambda n: provider(cloud, n), tell)
    assert [i["id"] for i in gone] == ["900"] and "spending cap" in told[0]


async def _tell_nothing(instance, text):
    raise AssertionError(f"nothing should be reaped: {text}")


async def test_a_retried_job_takes_up_its_instance_and_skips_the_steps_it_finished(cloud, configured, vast):
    async with open_store(cloud.database_path) as store:
        await store.add_instance("vast", "7001", "pots", "pots-cloud-5", "RTX 4090", 0.45, 10.0, "gone-host:1", None)
        for step in ("ready", "installed", "deployed", "gates"):
            await store.touch_instance("vast", "7001", step)
        run = cloud_run.CloudRun(cloud, configured, store, provider(cloud, "vast"), _ignore, "pots-cloud-5")
        await run.rent(quote(cloud), "builtin", "{}")
        assert not [r for r in vast.requests if r.method == "PUT"]  # nothing new rented
        [instance] = await store.instances()
        assert instance["worker"] == cloud_run.THIS_WORKER  # the reaper sees it driven again
        # with no connection at all, the finished steps are skipped rather than tried
        await run.install("builtin")
        public = "stabilityai/stable-diffusion-xl-base-1.0"  # a public model: the rented machine downloads it
        assert await run.deploy(public) == public
        await run.gates({}, "builtin", None)
        assert run.remote is None

"""The cloud providers through their real classes, against local servers speaking each API's wire format."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from core.cloud.providers import CloudError, Need, Offer, Provider, provider
from core.cloud.runpod import RunPod
from core.cloud.vast import Vast
from core.settings import Settings
from tests.cloud_apis import FakeRunPod, FakeVast

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx0loratrainTestKey loratrain"
TIMEOUT_S = 0.5


@pytest.fixture
def vast_api() -> Iterator[FakeVast]:
    with FakeVast() as fake:
        yield fake


@pytest.fixture
def runpod_api() -> Iterator[FakeRunPod]:
    with FakeRunPod() as fake:
        yield fake


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A short timeout, so that a hung provider is noticed fast."""
    with httpx.Client(timeout=TIMEOUT_S) as shared:
        yield shared


def connect(cls: type[Provider], tmp_path: Path, client: httpx.Client, **fields: object) -> Provider:
    """The provider with short pauses between retries."""
    return cls(Settings(grimoire=tmp_path, **fields), client, backoff_s=0.01)


@pytest.fixture
def vast(vast_api: FakeVast, tmp_path: Path, client: httpx.Client) -> Provider:
    return connect(Vast, tmp_path, client, **vast_api.settings())


@pytest.fixture
def runpod(runpod_api: FakeRunPod, tmp_path: Path, client: httpx.Client) -> Provider:
    return connect(RunPod, tmp_path, client, **runpod_api.settings())


def rent(p: Provider, need: Need | None = None) -> str:
    offer = p.offers(need or Need(vram_gb=24, disk_gb=50))[0]
    return p.create(offer, image="runpod/pytorch:test", disk_gb=50, public_key=KEY, label="loratrain-test-run1")


def calls(fake: FakeVast | FakeRunPod, method: str, path: str) -> list:
    return [r for r in fake.requests if (r.method, r.path) == (method, path)]


# --- choosing an offer -----------------------------------------------------------------------------------


def test_vast_offers_fit_the_need_cheapest_then_most_reliable_first(vast: Provider, vast_api: FakeVast) -> None:
    offers = vast.offers(Need(vram_gb=24, disk_gb=50))

    # 3090: too little disk; 3060: too little memory; 2× 4090: two cards; H100: host not verified.
    assert [o.id for o in offers] == ["102", "101", "104"]
    assert offers[1] == Offer(provider="vast", id="101", gpu="RTX 4090", vram_gb=24.0, usd_per_hour=0.45,
                              reliability=0.99, disk_gb=200, cuda="12.8", location="Sweden, SE")  # fmt: skip
    assert offers[2].reliability == 0.999  # from reliability2
    body = calls(vast_api, "POST", "/api/v0/bundles/")[0].json
    assert body["gpu_ram"] == {"gte": 24000}  # MB, as the vast CLI converts
    assert body["disk_space"] == {"gte": 50} and body["allocated_storage"] == 50  # dph_total prices the disk in
    assert body["num_gpus"] == {"eq": 1} and body["type"] == "ondemand" and body["order"] == [["dph_total", "asc"]]
    assert all(body[flag] == {"eq": value} for flag, value in
               [("verified", True), ("rentable", True), ("rented", False), ("external", False)])  # fmt: skip
    assert body["limit"] >= 10


def test_the_gpu_filter_is_a_forgiving_substring_and_the_limit_holds(vast: Provider, runpod: Provider) -> None:
    assert [o.id for o in vast.offers(Need(vram_gb=20, disk_gb=10, gpu="rtx4090"))] == ["102", "101"]
    assert [o.id for o in vast.offers(Need(vram_gb=20, disk_gb=10, gpu="A100", limit=5))] == ["104"]
    assert [o.id for o in vast.offers(Need(vram_gb=8, disk_gb=10, limit=2))] == ["105", "103"]
    assert [o.gpu for o in runpod.offers(Need(vram_gb=8, disk_gb=10, gpu="a100"))] == ["A100 PCIe"]


def test_runpod_offers_price_each_gpu_type_and_skip_those_without_a_price(
    runpod: Provider, runpod_api: FakeRunPod
) -> None:
    offers = runpod.offers(Need(vram_gb=24, disk_gb=50))

    # A4000: 16 GB; H100: no cloud rents it now. Each at its cheaper cloud, which the rental will ask for.
    assert [(o.id, o.usd_per_hour, o.cloud) for o in offers] == [
        ("NVIDIA GeForce RTX 4090", 0.34, "COMMUNITY"),
        ("NVIDIA A100 80GB PCIe", 1.64, "SECURE"),
    ]
    assert offers[0].reliability is None and offers[0].disk_gb is None and offers[0].vram_gb == 24
    (search,) = calls(runpod_api, "POST", "/graphql")
    assert search.query == {"api_key": runpod_api.key}
    assert "gpuTypes" in search.json["query"] and "uninterruptablePrice" in search.json["query"]


def test_the_graphql_key_stays_out_of_the_request_log(
    runpod: Provider, runpod_api: FakeRunPod, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="httpx"):
        runpod.offers(Need(vram_gb=24, disk_gb=50))
    assert "api_key=[hidden]" in caplog.text and runpod_api.key not in caplog.text


def test_an_offer_reads_as_one_plain_line(vast: Provider, runpod: Provider) -> None:
    assert vast.offers(Need(vram_gb=24, disk_gb=50))[1].line() == (
        "RTX 4090 (24 GB) on Vast.ai — $0.45/hour, reliability 99%, Sweden, SE"
    )
    assert runpod.offers(Need(vram_gb=24, disk_gb=50))[0].line() == (
        "RTX 4090 (24 GB) on RunPod — $0.34/hour, Community Cloud"
    )


# --- renting, waiting, giving back -------------------------------------------------------------------------


def test_vast_rents_an_ssh_machine_that_lets_our_key_in(vast: Provider, vast_api: FakeVast, tmp_path: Path) -> None:
    instance_id = rent(vast)

    (put,) = calls(vast_api, "PUT", "/api/v0/asks/102/")
    assert put.json | {"onstart": None} == {"image": "runpod/pytorch:test", "disk": 50, "runtype": "ssh_direct",
                                          "label": "loratrain-test-run1", "onstart": None}  # fmt: skip
    assert put.headers["authorization"] == f"Bearer {vast_api.key}"
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["bash", "-c", put.json["onstart"]], env={**os.environ, "HOME": str(home)}, check=True)
    assert (home / ".ssh" / "authorized_keys").read_text() == KEY + "\n"
    assert vast_api.instances[instance_id].label == "loratrain-test-run1"


def test_vast_waits_until_the_machine_answers_on_ssh(vast: Provider, vast_api: FakeVast) -> None:
    vast_api.ssh = ("127.0.0.1", 40022)
    instance_id = rent(vast)

    assert vast.instance(instance_id).state == "starting"
    ready = vast.wait_ready(instance_id, timeout_s=5, poll_s=0.01)

    assert ready.reachable and (ready.ssh_host, ready.ssh_port) == ("127.0.0.1", 40022)  # direct, not the proxy
    assert (ready.usd_per_hour, ready.gpu, ready.detail) == (0.45, "RTX 4090", "running")
    assert ready.label == "loratrain-test-run1"
    assert vast_api.instances[instance_id].polls == vast_api.ready_after + 1


def test_vast_falls_back_to_its_ssh_proxy(vast: Provider, vast_api: FakeVast) -> None:
    vast_api.direct, vast_api.ready_after = False, 0
    ready = vast.wait_ready(rent(vast), timeout_s=5, poll_s=0.01)
    assert (ready.ssh_host, ready.ssh_port) == vast_api.ssh


def test_runpod_rents_a_pod_with_public_ssh_and_our_key(runpod: Provider, runpod_api: FakeRunPod) -> None:
    runpod_api.ssh = ("127.0.0.1", 41022)
    instance_id = rent(runpod, Need(vram_gb=24, disk_gb=49.5))

    (post,) = calls(runpod_api, "POST", "/v1/pods")
    assert post.json == {"name": "loratrain-test-run1", "imageName": "runpod/pytorch:test",
                         "gpuTypeIds": ["NVIDIA GeForce RTX 4090"], "gpuCount": 1, "containerDiskInGb": 50,
                         "ports": ["22/tcp"], "supportPublicIp": True,
                         "env": {"PUBLIC_KEY": KEY, "SSH_PUBLIC_KEY": KEY},
                         "cloudType": "COMMUNITY"}  # fmt: skip
    assert post.headers["authorization"] == f"Bearer {runpod_api.key}"
    assert runpod.instance(instance_id).state == "starting"  # RUNNING is only desired until port 22 is mapped

    ready = runpod.wait_ready(instance_id, timeout_s=5, poll_s=0.01)
    assert ready.reachable and (ready.ssh_host, ready.ssh_port) == ("127.0.0.1", 41022)
    assert ready.usd_per_hour == 0.34 and ready.gpu == "RTX 4090" and ready.label == "loratrain-test-run1"


def test_runpod_reads_its_cost_per_hour_from_a_string(runpod: Provider, runpod_api: FakeRunPod) -> None:
    instance_id = rent(runpod)
    raw = httpx.get(f"{runpod_api.url}/pods/{instance_id}", headers={"Authorization": f"Bearer {runpod_api.key}"})
    assert raw.json()["costPerHr"] == "0.34"
    assert runpod.instance(instance_id).usd_per_hour == 0.34


@pytest.mark.parametrize("which", ["vast", "runpod"])
def test_a_machine_that_stops_while_starting_is_reported_plainly(which: str, request: pytest.FixtureRequest) -> None:
    p: Provider = request.getfixturevalue(which)
    fake = request.getfixturevalue(f"{which}_api")
    instance_id = rent(p)
    fake.instances[instance_id].status = "exited"

    with pytest.raises(CloudError, match="stopped before it was ready .status: (exited|EXITED).*given back"):
        p.wait_ready(instance_id, timeout_s=5, poll_s=0.01)


def test_a_machine_that_never_gets_ready_times_out(vast: Provider, vast_api: FakeVast) -> None:
    vast_api.ready_after = 10**6
    with pytest.raises(CloudError, match=r"not ready after 0.05 seconds \(last status: loading\).*given back"):
        vast.wait_ready(rent(vast), timeout_s=0.05, poll_s=0.01)


@pytest.mark.parametrize("which", ["vast", "runpod"])
def test_destroy_gives_back_once_and_then_knows_it_is_gone(which: str, request: pytest.FixtureRequest) -> None:
    p: Provider = request.getfixturevalue(which)
    fake = request.getfixturevalue(f"{which}_api")
    instance_id = rent(p)

    assert p.destroy(instance_id) is True
    assert p.destroy(instance_id) is False
    assert fake.destroyed == [instance_id]
    assert p.instance(instance_id).state == "gone"


@pytest.mark.parametrize("which", ["vast", "runpod"])
def test_a_machine_the_provider_ended_is_gone(which: str, request: pytest.FixtureRequest) -> None:
    p: Provider = request.getfixturevalue(which)
    fake = request.getfixturevalue(f"{which}_api")
    instance_id = rent(p)
    fake.kill(instance_id)

    assert p.instance(instance_id).state == "gone"
    with pytest.raises(CloudError, match="disappeared before it was ready"):
        p.wait_ready(instance_id, timeout_s=5, poll_s=0.01)
    assert p.destroy(instance_id) is False and fake.destroyed == []


def test_vast_lists_every_instance_across_pages(vast: Provider, vast_api: FakeVast) -> None:
    ids = [vast_api.add(f"stray-{n}") for n in range(30)]
    found = vast.instances()

    assert [i.id for i in found] == ids and found[29].label == "stray-29" and found[0].state == "running"
    assert len(calls(vast_api, "GET", "/api/v1/instances/")) == 2  # 25 a page


def test_runpod_lists_every_pod(runpod: Provider, runpod_api: FakeRunPod) -> None:
    first, second = runpod_api.add("a"), runpod_api.add("b", status="exited")
    assert [(i.id, i.label, i.state) for i in runpod.instances()] == [(first, "a", "running"), (second, "b", "failed")]


# --- when the provider misbehaves ------------------------------------------------------------------------


def test_a_busy_provider_is_asked_again(vast: Provider, vast_api: FakeVast) -> None:
    vast_api.fail_next(500, times=2)
    assert len(vast.offers(Need(vram_gb=24, disk_gb=50))) == 3
    assert len(calls(vast_api, "POST", "/api/v0/bundles/")) == 3


def test_a_provider_that_stays_busy_is_a_plain_error(runpod: Provider, runpod_api: FakeRunPod) -> None:
    runpod_api.fail_next(503, times=3)
    with pytest.raises(CloudError, match=r"RunPod is busy or having trouble \(error 503\).*try again"):
        runpod.offers(Need(vram_gb=24, disk_gb=50))
    assert len(runpod_api.requests) == 3


def test_a_rental_is_never_sent_twice_after_a_server_error(vast: Provider, vast_api: FakeVast) -> None:
    offer = vast.offers(Need(vram_gb=24, disk_gb=50))[0]
    vast_api.fail_next(500)
    with pytest.raises(CloudError, match="busy or having trouble"):
        vast.create(offer, image="img", disk_gb=50, public_key=KEY, label="loratrain-test-run1")
    assert len(calls(vast_api, "PUT", "/api/v0/asks/102/")) == 1 and vast_api.instances == {}


@pytest.mark.parametrize("which", ["vast", "runpod"])
def test_a_rental_made_before_the_provider_failed_to_answer_is_found(
    which: str, request: pytest.FixtureRequest
) -> None:
    p: Provider = request.getfixturevalue(which)
    fake = request.getfixturevalue(f"{which}_api")
    offer = p.offers(Need(vram_gb=24, disk_gb=50))[0]
    stray = fake.add("someone-else")
    fake.fail_next(500, carry_out=True)  # RunPod's POST /pods is known to do this

    instance_id = p.create(offer, image="img", disk_gb=50, public_key=KEY, label="loratrain-test-run1")

    assert instance_id != stray and fake.instances[instance_id].label == "loratrain-test-run1"
    assert len(fake.instances) == 2


def test_a_rate_limited_rental_is_sent_again(runpod: Provider, runpod_api: FakeRunPod) -> None:
    offer = runpod.offers(Need(vram_gb=24, disk_gb=50))[0]
    runpod_api.fail_next(429)
    runpod.create(offer, image="img", disk_gb=50, public_key=KEY, label="loratrain-test-run1")
    assert len(calls(runpod_api, "POST", "/v1/pods")) == 2 and len(runpod_api.instances) == 1


def test_a_provider_that_hangs_is_given_up_on(vast: Provider, vast_api: FakeVast) -> None:
    vast_api.hang_next(5)
    with pytest.raises(CloudError, match="Vast.ai did not answer in time during the GPU search; try again later"):
        vast.offers(Need(vram_gb=24, disk_gb=50))


def test_a_provider_that_cannot_be_reached_is_a_plain_error(tmp_path: Path, client: httpx.Client) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = connect(Vast, tmp_path, client, vast_url=f"http://127.0.0.1:{port}/api/v0", vast_api_key=SecretStr("k"))
    with pytest.raises(CloudError, match="Vast.ai did not answer during the GPU search: no connection"):
        p.offers(Need(vram_gb=24, disk_gb=50))


@pytest.mark.parametrize("which", ["vast", "runpod"])
def test_a_refused_key_names_the_setting_and_never_the_key(
    which: str, request: pytest.FixtureRequest, tmp_path: Path, client: httpx.Client
) -> None:
    fake = request.getfixturevalue(f"{which}_api")
    secret = "sk-wrong-key-123456"
    fields = fake.settings() | {f"{which}_api_key": SecretStr(secret)}
    p = connect(Vast if which == "vast" else RunPod, tmp_path, client, **fields)

    with pytest.raises(CloudError) as caught:
        p.instances() if which == "vast" else p.offers(Need(vram_gb=24, disk_gb=50))

    assert f"LORATRAIN_{which.upper()}_API_KEY" in str(caught.value) and "refused the API key" in str(caught.value)
    assert secret not in str(caught.value) and secret not in repr(p) and caught.value.__cause__ is None


def test_an_answer_in_an_unknown_form_is_named(tmp_path: Path, client: httpx.Client) -> None:
    with FakeVast(offers=[{"id": 1, "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.4, "disk_space": 100}]) as fake:
        p = connect(Vast, tmp_path, client, **fake.settings())
        with pytest.raises(CloudError, match="answered the GPU search in a form loratrain does not .*gpu_name"):
            p.offers(Need(vram_gb=24, disk_gb=50))


# --- choosing a provider ---------------------------------------------------------------------------------


def test_the_factory_needs_a_key_and_a_known_name(tmp_path: Path) -> None:
    keyless = Settings(grimoire=tmp_path, vast_api_key=None, runpod_api_key=None)
    with pytest.raises(CloudError, match="No Vast.ai API key: set LORATRAIN_VAST_API_KEY"):
        provider(keyless, "vast")
    with pytest.raises(CloudError, match="No RunPod API key: set LORATRAIN_RUNPOD_API_KEY"):
        provider(keyless, "runpod")
    keyed = Settings(grimoire=tmp_path, vast_api_key=SecretStr("k"), runpod_api_key=SecretStr("k"))
    with pytest.raises(CloudError, match="Unknown cloud provider 'lambda'.*vast \\(Vast.ai\\), runpod \\(RunPod\\)"):
        provider(keyed, "lambda")
    assert isinstance(provider(keyed, "vast"), Vast) and isinstance(provider(keyed, "runpod"), RunPod)

"""RunPod: GPU types and prices from its GraphQL API, pods through REST v1 (shared/research/cloud-env.md §2).

RunPod rents a GPU *type*, not a particular machine, so an offer is a type at its current price, and
RunPod says nothing about a host's reliability, disk or driver. A pod's ``desiredStatus`` is what was
asked for, not what is: a pod counts as running once it has a public address with port 22 mapped.
"""

from __future__ import annotations

import logging
import math
import re

from core.cloud.providers import Instance, Need, Offer, Provider

GPU_TYPES = (
    "query GpuTypes { gpuTypes { id displayName memoryInGb secureCloud communityCloud securePrice communityPrice "
    "lowestPrice(input: {gpuCount: 1}) { uninterruptablePrice } } }"
)
KEY_IN_URL = re.compile(r"(api_key=)[^&\s]+")
STATES = {"EXITED": "failed", "TERMINATED": "gone"}  # any other desiredStatus: starting until SSH is mapped
CLOUD_NAMES = {"SECURE": "Secure Cloud", "COMMUNITY": "Community Cloud"}


class HideKey(logging.Filter):
    """httpx logs each request's URL at INFO, and the GraphQL URL carries the API key: it is blanked out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_hidden(arg) for arg in record.args)
        return True


def _hidden(arg: object) -> object:
    text = str(arg)
    return KEY_IN_URL.sub(r"\1[hidden]", text) if "api_key=" in text else arg


logging.getLogger("httpx").addFilter(HideKey())


class RunPod(Provider):
    name = "runpod"
    title = "RunPod"

    @property
    def url(self) -> str:
        return self.settings.runpod_url.rstrip("/")

    def _search(self, need: Need) -> list[Offer]:
        # GraphQL takes the key as a query parameter (as runpod-python does); REST takes it as a header.
        answer = self._call(
            "POST",
            self.settings.runpod_graphql_url,
            "the GPU search",
            json={"query": GPU_TYPES},
            params={"api_key": self._key.get_secret_value()},
        )
        if isinstance(answer, dict) and answer.get("errors"):
            raise self._refused("the GPU search", answer)
        types = self._field(self._field(answer, "data", "the GPU search"), "gpuTypes", "the GPU search")
        offers = self._parse(types, _offer, "the GPU search")
        return [offer for offer in offers if offer is not None and offer.vram_gb >= need.vram_gb]

    def _create(self, offer: Offer, *, image: str, disk_gb: float, public_key: str, label: str) -> str:
        key = public_key.strip()
        body = {
            "name": label,
            "imageName": image,
            "gpuTypeIds": [offer.id],
            "gpuCount": 1,
            "containerDiskInGb": math.ceil(disk_gb),
            "ports": ["22/tcp"],
            "supportPublicIp": True,  # the proxy SSH has no SFTP; the public address does
            # RunPod's images write $PUBLIC_KEY into authorized_keys; SSH_PUBLIC_KEY is RunPod's per-pod
            # override of the account's keys.
            "env": {"PUBLIC_KEY": key, "SSH_PUBLIC_KEY": key},
            **({"cloudType": offer.cloud} if offer.cloud else {}),
        }
        pod = self._call("POST", f"{self.url}/pods", "the rental", json=body, headers=self._bearer(), repeatable=False)
        return str(self._field(pod, "id", "the rental"))

    def instance(self, instance_id: str) -> Instance:
        url = f"{self.url}/pods/{instance_id}"
        pod = self._call("GET", url, "the status check", headers=self._bearer(), missing_ok=True)
        if pod is None:
            return Instance(provider="runpod", id=str(instance_id), state="gone", detail="not found")
        return self._parse([pod], _instance, "the status check")[0]

    def instances(self) -> list[Instance]:
        pods = self._call("GET", f"{self.url}/pods", "the list of your GPUs", headers=self._bearer())
        return self._parse(pods, _instance, "the list of your GPUs")

    def destroy(self, instance_id: str) -> bool:
        url = f"{self.url}/pods/{instance_id}"
        return self._call("DELETE", url, "giving the GPU back", headers=self._bearer(), missing_ok=True) is not None


def _offer(row: dict) -> Offer | None:
    """The GPU type as an offer at its on-demand price, or None when RunPod has none to rent now."""
    cheapest = _cheapest(row)
    if cheapest is None or not row.get("memoryInGb"):
        return None
    price, cloud = cheapest
    return Offer(
        provider="runpod",
        id=row["id"],
        gpu=row.get("displayName") or row["id"],
        vram_gb=row["memoryInGb"],
        usd_per_hour=price,
        location=CLOUD_NAMES.get(cloud),
        cloud=cloud,
    )


def _cheapest(row: dict) -> tuple[float, str | None] | None:
    """(price, cloud) of the cheaper cloud that rents the type on demand now — the rental asks for that cloud,
    so the price shown is the price paid; else RunPod's lowest on-demand price, cloud unknown."""
    clouds = [("SECURE", "secureCloud", "securePrice"), ("COMMUNITY", "communityCloud", "communityPrice")]
    found = [(float(row[price]), cloud) for cloud, offered, price in clouds if row.get(offered) and row.get(price)]
    if found:
        return min(found)
    lowest = (row.get("lowestPrice") or {}).get("uninterruptablePrice")
    return (float(lowest), None) if lowest else None


def _instance(pod: dict) -> Instance:
    status = pod.get("desiredStatus") or ""
    ip = pod.get("publicIp") or None
    port = (pod.get("portMappings") or {}).get("22")
    reachable = status == "RUNNING" and bool(ip) and bool(port)
    state = STATES.get(status, "running" if reachable else "starting")
    cost = pod.get("costPerHr")  # documented as a string ("0.74"); adjustedCostPerHr as a number
    if cost is None:
        cost = pod.get("adjustedCostPerHr")
    return Instance(
        provider="runpod",
        id=str(pod["id"]),
        state=state,
        ssh_host=ip,
        ssh_port=int(port) if port else None,
        usd_per_hour=None if cost is None else float(cost),
        gpu=(pod.get("gpu") or {}).get("displayName"),
        label=pod.get("name"),
        detail=status,
    )

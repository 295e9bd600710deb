"""Vast.ai: renting a GPU on its marketplace through the REST API (shared/research/cloud-env.md §1).

Offers are "asks" found with ``POST /bundles/``; renting one (``PUT /asks/{id}/``) makes an instance
whose id is the new contract. Instances are listed through the paged ``/api/v1/instances/``: the v0
list answers 410 for accounts made after June 2026 (vast-ai/docs openapi; the official SDK pages v1).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from core.cloud.providers import Instance, Need, Offer, Provider

# gpu_ram is in MB; the vast CLI turns GB into MB with ×1000, so a card sold as 24 GB (24564 MB) still
# passes a 24 GB need (×1024 would rule it out).
MB_PER_GB = 1000
# Offers asked for: the --gpu filter is a substring match the API cannot do, so it is applied to a wider pool.
SEARCH_POOL = 64
PAGE = 25  # instances per page of the v1 list (its cap)
FAILED = {"exited", "offline", "unknown", "frozen", "stopped"}  # actual_status words for "will not come up"


class Vast(Provider):
    name = "vast"
    title = "Vast.ai"

    @property
    def url(self) -> str:
        return self.settings.vast_url.rstrip("/")

    @property
    def v1_url(self) -> str:
        return re.sub(r"/v0$", "/v1", self.url)

    def _search(self, need: Need) -> list[Offer]:
        query = search_query(need)
        answer = self._call("POST", f"{self.url}/bundles/", "the GPU search", json=query, headers=self._bearer())
        return self._parse(self._field(answer, "offers", "the GPU search"), _offer, "the GPU search")

    def _create(self, offer: Offer, *, image: str, disk_gb: float, public_key: str, label: str) -> str:
        body = {
            "image": image,
            "disk": disk_gb,
            "runtype": "ssh_direct",  # port 22 on the host itself: SFTP works, no proxy in between
            "label": label,
            "onstart": authorize_key(public_key),
        }
        url = f"{self.url}/asks/{offer.id}/"
        answer = self._call("PUT", url, "the rental", json=body, headers=self._bearer(), repeatable=False)
        if not isinstance(answer, dict) or not answer.get("success"):
            raise self._refused("the rental", answer)
        return str(self._field(answer, "new_contract", "the rental"))

    def instance(self, instance_id: str) -> Instance:
        url = f"{self.url}/instances/{instance_id}/"
        answer = self._call(
            "GET", url, "the status check", params={"owner": "me"}, headers=self._bearer(), missing_ok=True
        )
        row = None if answer is None else self._field(answer, "instances", "the status check")
        if not row:  # Vast answers {"instances": null} for an id it does not know
            return Instance(provider="vast", id=str(instance_id), state="gone", detail="not found")
        return self._parse([row], _instance, "the status check")[0]

    def instances(self) -> list[Instance]:
        params: dict[str, Any] = {
            "select_filters": "{}",
            "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
            "limit": PAGE,
        }
        found: list[Instance] = []
        while True:
            url = f"{self.v1_url}/instances/"
            answer = self._call("GET", url, "the list of your GPUs", params=params, headers=self._bearer())
            rows = self._field(answer, "instances", "the list of your GPUs")
            found += self._parse(rows, _instance, "the list of your GPUs")
            if not answer.get("next_token"):
                return found
            params["after_token"] = answer["next_token"]

    def destroy(self, instance_id: str) -> bool:
        url = f"{self.url}/instances/{instance_id}/"
        answer = self._call("DELETE", url, "giving the GPU back", json={}, headers=self._bearer(), missing_ok=True)
        if answer is None or (isinstance(answer, dict) and answer.get("error") == "no_such_instance"):
            return False
        if not isinstance(answer, dict) or not answer.get("success"):
            raise self._refused("giving the GPU back", answer)
        return True


def search_query(need: Need) -> dict[str, Any]:
    """The bundles filter for ``need``, with the vast CLI's defaults (verified, rentable, not yet rented,
    not external) and ``allocated_storage`` set to the run's disk so that ``dph_total`` prices it in."""
    return {
        "verified": {"eq": True},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "num_gpus": {"eq": 1},
        "gpu_ram": {"gte": need.vram_gb * MB_PER_GB},
        "disk_space": {"gte": need.disk_gb},
        "type": "ondemand",
        "order": [["dph_total", "asc"]],
        "limit": max(need.limit, SEARCH_POOL),
        "allocated_storage": need.disk_gb,
    }


def authorize_key(public_key: str) -> str:
    """The onstart script that lets ``public_key`` log in as root. Vast runs onstart after its own
    entrypoint has set up SSH, so the key is added beside the account's keys, not instead of them."""
    key = shlex.quote(public_key.strip())
    return (
        f"mkdir -p ~/.ssh && chmod 700 ~/.ssh && echo {key} >> ~/.ssh/authorized_keys "
        "&& chmod 600 ~/.ssh/authorized_keys"
    )


def _offer(row: dict) -> Offer:
    cuda = row.get("cuda_max_good")
    reliability = row.get("reliability")
    return Offer(
        provider="vast",
        id=str(row["id"]),
        gpu=row["gpu_name"],
        gpus=row.get("num_gpus") or 1,
        vram_gb=round(row["gpu_ram"] / 1024, 1),
        usd_per_hour=row["dph_total"],
        reliability=reliability if reliability is not None else row.get("reliability2"),
        disk_gb=row.get("disk_space"),
        cuda=None if cuda is None else f"{float(cuda):g}",
        location=(row.get("geolocation") or "").strip() or None,
    )


def _instance(row: dict) -> Instance:
    status = row.get("actual_status")
    host, port = _ssh_endpoint(row)
    state = "running" if status == "running" else "failed" if status in FAILED else "starting"
    return Instance(
        provider="vast",
        id=str(row["id"]),
        state=state,
        ssh_host=host,
        ssh_port=port,
        usd_per_hour=row.get("dph_total"),
        gpu=row.get("gpu_name"),
        label=(row.get("label") or "").strip() or None,
        detail=status or "provisioning",
    )


def _ssh_endpoint(row: dict) -> tuple[str | None, int | None]:
    """Direct (the host's public address and the port mapped to 22) when there is one, else Vast's proxy."""
    mapped = (row.get("ports") or {}).get("22/tcp") or []
    ip = (row.get("public_ipaddr") or "").strip()  # Vast pads some strings with whitespace
    if ip and mapped:
        return ip, int(mapped[0]["HostPort"])
    if row.get("ssh_host") and row.get("ssh_port"):
        return row["ssh_host"].strip(), int(row["ssh_port"])
    return None, None

"""Local stand-ins for Vast.ai's and RunPod's HTTP APIs, speaking their documented wire formats
(shared/research/cloud-env.md §1–2), so tests drive the real provider classes over real HTTP.

    with FakeVast() as vast:
        settings = Settings(grimoire=tmp_path, **vast.settings())

Both fakes share this small API:

- ``settings()``: the Settings fields that point a provider at the fake (its addresses and ``key``, the one
  API key it accepts, "test-key" unless given); ``url`` is the REST base address (``…/api/v0`` for Vast,
  ``…/v1`` for RunPod; RunPod's ``graphql_url`` too).
- ``requests``: every request received, in order, as ``Request(method, path, query, json, headers)``.
- ``instances``: id → ``Rented`` (``status`` "starting", "running" or "exited": set it to make one fail;
  ``label``; ``body``: the create request). ``destroyed``: the ids destroyed through the API, in order.
- ``ssh = (host, port)``: the SSH endpoint a running instance reports. ``ready_after = 2``: how many status
  checks of that instance (GETs of it alone, not of the list) answer "starting" before it runs (Vast: no
  status, then "loading"; RunPod: RUNNING without an address).
- ``fail_next(status, times=1, carry_out=False)``: the next requests answer this HTTP status; with
  ``carry_out`` the request is carried out first (a provider that rents, then fails to say so).
- ``hang_next(seconds, times=1)``: the next requests are carried out, but answered only after ``seconds``.
- ``add(label, status="running")``: an instance rented elsewhere (a stray for the reaper); returns its id.
- ``kill(id)``: the provider ends an instance on its own: it is gone, not in ``destroyed``.
- A wrong key is answered 401; an unknown id as the provider documents it (Vast: ``{"instances": null}``,
  and 404 ``no_such_instance`` on delete; RunPod: 404).
"""

from __future__ import annotations

import itertools
import json
import operator
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

Answer = tuple[int, Any]  # HTTP status and JSON body (None: no body)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]  # lower-case names


@dataclass
class Rented:
    id: str
    label: str
    gpu: str
    usd_per_hour: float
    status: str = "starting"  # "starting" → "running" after ``ready_after`` polls; "exited" stays
    polls: int = 0
    body: dict = field(default_factory=dict)


class FakeAPI(ABC):
    """The HTTP server, the failure switches and the instance book-keeping both fakes share."""

    def __init__(self, key: str = "test-key") -> None:
        self.key = key
        self.requests: list[Request] = []
        self.instances: dict[str, Rented] = {}
        self.destroyed: list[str] = []
        self.ssh: tuple[str, int] = ("127.0.0.1", 2222)
        self.ready_after = 2
        self._failures: list[tuple[int, bool]] = []
        self._hangs: list[float] = []
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._numbers = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        # A short poll interval: shutdown() waits for one, and every test closes a fake.
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._closing.set()  # hung answers end now
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail_next(self, status: int, times: int = 1, carry_out: bool = False) -> None:
        with self._lock:
            self._failures += [(status, carry_out)] * times

    def hang_next(self, seconds: float, times: int = 1) -> None:
        with self._lock:
            self._hangs += [seconds] * times

    def add(self, label: str, status: str = "running") -> str:
        with self._lock:
            rented = self._rent(label, gpu="RTX 4090", usd_per_hour=0.5, body={})
            rented.status = status
            return rented.id

    def kill(self, instance_id: str) -> None:
        with self._lock:
            del self.instances[instance_id]

    def handle(self, request: Request) -> Answer:
        with self._lock:
            self.requests.append(request)
            failure = self._failures.pop(0) if self._failures else None
            hang = self._hangs.pop(0) if self._hangs else None
            if failure and not failure[1]:
                return failure[0], self.error(failure[0], "injected failure")
            answer = self.route(request) if self.authorized(request) else (401, self.error(401, "invalid API key"))
        if hang:
            self._closing.wait(hang)
        return (failure[0], self.error(failure[0], "injected failure")) if failure else answer

    def _poll(self, rented: Rented) -> None:
        rented.polls += 1
        if rented.status == "starting" and rented.polls > self.ready_after:
            rented.status = "running"

    def _rent(self, label: str, gpu: str, usd_per_hour: float, body: dict) -> Rented:
        rented = Rented(self.new_id(next(self._numbers)), label, gpu, usd_per_hour, body=body)
        self.instances[rented.id] = rented
        return rented

    def _destroy(self, instance_id: str) -> bool:
        if self.instances.pop(instance_id, None) is None:
            return False
        self.destroyed.append(instance_id)
        return True

    # what each provider's wire format decides
    @abstractmethod
    def new_id(self, number: int) -> str:
        """The provider's id for its ``number``-th instance."""

    @abstractmethod
    def authorized(self, request: Request) -> bool:
        """Whether the request carries the key, where this provider expects it."""

    @abstractmethod
    def route(self, request: Request) -> Answer:
        """The answer to an authorized request."""

    @abstractmethod
    def error(self, status: int, message: str) -> Any:
        """An error body in this provider's shape."""


def _handler(fake: FakeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def serve(self) -> None:
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = Request(
                self.command, url.path, dict(parse_qsl(url.query)), json.loads(raw) if raw else None, headers
            )
            status, body = fake.handle(request)
            data = b"" if body is None else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a hang)
                pass

        do_GET = do_POST = do_PUT = do_DELETE = serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — the base class's name
            pass

    return Handler


# --- Vast.ai ---------------------------------------------------------------------------------------------

VAST_OFFERS = [
    # id, gpu, MB per GPU, $/hour, reliability, free disk GB, max CUDA, where; the flags the CLI filters on
    {"id": 101, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.45, "reliability": 0.99,
     "disk_space": 200, "cuda_max_good": 12.8, "geolocation": "Sweden, SE"},
    {"id": 102, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.45, "reliability": 0.995,
     "disk_space": 100, "cuda_max_good": 12.4, "geolocation": "US"},
    {"id": 103, "gpu_name": "RTX 3090", "num_gpus": 1, "gpu_ram": 24576, "dph_total": 0.25, "reliability": 0.97,
     "disk_space": 40, "cuda_max_good": 12.2, "geolocation": "Poland, PL"},
    {"id": 104, "gpu_name": "A100 SXM4", "num_gpus": 1, "gpu_ram": 81920, "dph_total": 1.10, "reliability2": 0.999,
     "disk_space": 500, "cuda_max_good": 12.8, "geolocation": "Canada, CA"},
    {"id": 105, "gpu_name": "RTX 3060", "num_gpus": 1, "gpu_ram": 12288, "dph_total": 0.08, "reliability": 0.98,
     "disk_space": 300, "cuda_max_good": 12.8, "geolocation": "US"},
    {"id": 106, "gpu_name": "RTX 4090", "num_gpus": 2, "gpu_ram": 24564, "dph_total": 0.80, "reliability": 0.99,
     "disk_space": 300, "cuda_max_good": 12.8, "geolocation": "US"},
    {"id": 107, "gpu_name": "H100 SXM", "num_gpus": 1, "gpu_ram": 81559, "dph_total": 0.90, "reliability": 0.99,
     "disk_space": 300, "cuda_max_good": 12.8, "geolocation": "US", "verified": False},
]  # fmt: skip
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda value, allowed: value in allowed,
    "notin": lambda value, allowed: value not in allowed,
}


class FakeVast(FakeAPI):
    """Vast.ai's API v0 (search, rent, show, destroy) and the paged v1 instance list.

    ``offers``: the marketplace, as offer rows (a copy of ``VAST_OFFERS`` unless given); an offer is
    rented out once taken. ``direct = False``: running instances report only Vast's SSH proxy. The v0
    instance list answers 410, as it does for accounts made after June 2026."""

    def __init__(self, key: str = "test-key", offers: list[dict] | None = None) -> None:
        super().__init__(key)
        flags = {"verified": True, "rentable": True, "rented": False, "external": False}
        self.offers = [{**flags, **offer} for offer in (VAST_OFFERS if offers is None else offers)]
        self.direct = True

    @property
    def url(self) -> str:
        return f"{self.address}/api/v0"

    def settings(self) -> dict[str, Any]:
        return {"vast_url": self.url, "vast_api_key": SecretStr(self.key)}

    def new_id(self, number: int) -> str:
        return str(7000 + number)

    def authorized(self, request: Request) -> bool:
        return request.path == "/api/v0/bundles/" or request.headers.get("authorization") == f"Bearer {self.key}"

    def error(self, status: int, message: str) -> Any:
        return {"success": False, "error": "auth_error" if status == 401 else "server_error", "msg": message}

    def route(self, request: Request) -> Answer:
        one = re.fullmatch(r"/api/v0/instances/(\d+)/", request.path)
        ask = re.fullmatch(r"/api/v0/asks/(\d+)/", request.path)
        if (request.method, request.path) == ("POST", "/api/v0/bundles/"):
            return 200, {"offers": self.search(request.json)}
        if request.method == "PUT" and ask:
            return self.rent(int(ask[1]), request.json)
        if (request.method, request.path) == ("GET", "/api/v1/instances/"):
            return 200, self.page(int(request.query.get("limit", 25)), request.query.get("after_token"))
        if (request.method, request.path) == ("GET", "/api/v0/instances/"):
            return 410, {"error": "deprecated", "msg": "Endpoint deprecated: Use /api/v1/instances/ instead."}
        if request.method == "GET" and one:
            rented = self.instances.get(one[1])
            if rented:
                self._poll(rented)
            return 200, {"instances": rented and self.row(rented)}
        if request.method == "DELETE" and one:
            if self._destroy(one[1]):
                return 200, {"success": True}
            return 404, {"success": False, "error": "no_such_instance", "msg": f"Instance {one[1]} not found."}
        return 404, {"success": False, "error": "not_found", "msg": "no such endpoint"}

    def search(self, query: dict) -> list[dict]:
        tests = {name: test for name, test in query.items() if isinstance(test, dict)}  # not limit, order, type…
        filters = [(name, op, value) for name, test in tests.items() for op, value in test.items()]
        found = [offer for offer in self.offers if all(_OPS[op](offer[name], value) for name, op, value in filters)]
        for name, direction in reversed(query.get("order", [])):
            found.sort(key=lambda offer: offer[name], reverse=direction == "desc")
        return found[: query.get("limit", 64)]

    def rent(self, ask: int, body: dict) -> Answer:
        offer = next((o for o in self.offers if o["id"] == ask and not o["rented"]), None)
        if offer is None:
            return 404, {
                "success": False,
                "error": "no_such_ask",
                "msg": f"Instance type by id {ask} is not available.",
            }
        offer["rented"] = True
        rented = self._rent(body.get("label", ""), offer["gpu_name"], offer["dph_total"], body)
        return 200, {"success": True, "new_contract": int(rented.id)}

    def page(self, limit: int, after: str | None) -> dict:
        ids = sorted(self.instances, key=int)
        rest = [i for i in ids if after is None or int(i) > int(after)]
        page = rest[:limit]
        more = len(rest) > limit
        return {"instances": [self.row(self.instances[i]) for i in page], "next_token": page[-1] if more else None,
                "total_instances": len(ids)}  # fmt: skip

    def row(self, rented: Rented) -> dict:
        starting = "loading" if rented.polls > 1 else None  # no status at all on the first look
        status = starting if rented.status == "starting" else rented.status
        row = {"id": int(rented.id), "label": rented.label, "actual_status": status, "intended_status": "running",
               "gpu_name": rented.gpu, "num_gpus": 1, "dph_total": rented.usd_per_hour,
               "image_uuid": rented.body.get("image"), "public_ipaddr": None, "ports": {},
               "ssh_host": None, "ssh_port": None}  # fmt: skip
        if rented.status == "running":
            host, port = self.ssh
            if self.direct:
                row |= {"public_ipaddr": host, "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]},
                        "ssh_host": "ssh5.vast.ai", "ssh_port": 10000 + int(rented.id) % 1000}  # fmt: skip
            else:
                row |= {"ssh_host": host, "ssh_port": port}
        return row


# --- RunPod ----------------------------------------------------------------------------------------------

RUNPOD_GPU_TYPES = [
    {"id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "memoryInGb": 24, "secureCloud": True,
     "communityCloud": True, "securePrice": 0.69, "communityPrice": 0.34,
     "lowestPrice": {"uninterruptablePrice": 0.34}},
    {"id": "NVIDIA A100 80GB PCIe", "displayName": "A100 PCIe", "memoryInGb": 80, "secureCloud": True,
     "communityCloud": False, "securePrice": 1.64, "communityPrice": 0,
     "lowestPrice": {"uninterruptablePrice": None}},
    {"id": "NVIDIA RTX A4000", "displayName": "RTX A4000", "memoryInGb": 16, "secureCloud": True,
     "communityCloud": True, "securePrice": 0.32, "communityPrice": 0.17,
     "lowestPrice": {"uninterruptablePrice": 0.17}},
    {"id": "NVIDIA H100 80GB HBM3", "displayName": "H100 SXM", "memoryInGb": 80, "secureCloud": False,
     "communityCloud": False, "securePrice": 2.69, "communityPrice": 2.39, "lowestPrice": None},
]  # fmt: skip


class FakeRunPod(FakeAPI):
    """RunPod's GraphQL ``gpuTypes`` query (key as ``?api_key=``) and REST v1 pods (key as a Bearer header).

    ``gpu_types``: the GPU types and prices (a copy of ``RUNPOD_GPU_TYPES`` unless given). A pod's
    ``costPerHr`` is a string, as in RunPod's documented example."""

    def __init__(self, key: str = "test-key", gpu_types: list[dict] | None = None) -> None:
        super().__init__(key)
        self.gpu_types = [dict(row) for row in (RUNPOD_GPU_TYPES if gpu_types is None else gpu_types)]

    @property
    def url(self) -> str:
        return f"{self.address}/v1"

    @property
    def graphql_url(self) -> str:
        return f"{self.address}/graphql"

    def settings(self) -> dict[str, Any]:
        return {"runpod_url": self.url, "runpod_graphql_url": self.graphql_url, "runpod_api_key": SecretStr(self.key)}

    def new_id(self, number: int) -> str:
        return f"pod{number:04d}xyzab"

    def authorized(self, request: Request) -> bool:
        if request.path == "/graphql":
            return request.query.get("api_key") == self.key
        return request.headers.get("authorization") == f"Bearer {self.key}"

    def error(self, status: int, message: str) -> Any:
        return {"errors": [{"message": message}]} if status == 401 else {"error": message, "status": status}

    def route(self, request: Request) -> Answer:
        one = re.fullmatch(r"/v1/pods/(\w+)", request.path)
        if (request.method, request.path) == ("POST", "/graphql"):
            if "gpuTypes" not in request.json.get("query", ""):
                return 400, {"errors": [{"message": "Cannot query that field"}]}
            return 200, {"data": {"gpuTypes": self.gpu_types}}
        if (request.method, request.path) == ("POST", "/v1/pods"):
            return self.create(request.json)
        if (request.method, request.path) == ("GET", "/v1/pods"):
            return 200, [self.pod(rented) for rented in self.instances.values()]
        if request.method == "GET" and one and one[1] in self.instances:
            rented = self.instances[one[1]]
            self._poll(rented)
            return 200, self.pod(rented)
        if request.method == "DELETE" and one and self._destroy(one[1]):
            return 200, None
        return 404, {"error": "pod not found", "status": 404}

    def create(self, body: dict) -> Answer:
        kind = next((row for row in self.gpu_types if row["id"] in body.get("gpuTypeIds", [])), None)
        if kind is None:
            return 400, {"error": "There are no instances currently available", "status": 400}
        price = (kind.get("lowestPrice") or {}).get("uninterruptablePrice") or kind["securePrice"]
        rented = self._rent(body.get("name", ""), kind["displayName"], price, body)
        return 201, self.pod(rented)

    def pod(self, rented: Rented) -> dict:
        running = rented.status == "running"
        kind = rented.body.get("gpuTypeIds", ["NVIDIA GeForce RTX 4090"])[0]
        return {
            "id": rented.id,
            "name": rented.label,
            "desiredStatus": "EXITED" if rented.status == "exited" else "RUNNING",
            "costPerHr": f"{rented.usd_per_hour}",
            "adjustedCostPerHr": rented.usd_per_hour,
            "image": rented.body.get("imageName"),
            "env": rented.body.get("env", {}),
            "containerDiskInGb": rented.body.get("containerDiskInGb"),
            "gpu": {"id": kind, "count": 1, "displayName": rented.gpu},
            "publicIp": self.ssh[0] if running else "",
            "portMappings": {"22": self.ssh[1]} if running else {},
        }

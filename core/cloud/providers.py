"""What renting a cloud GPU looks like to the rest of loratrain, whichever provider rents it.

Vast.ai and RunPod speak different APIs (shared/research/cloud-env.md §1–2); a run, the cost estimate
and the reaper see only this module: an ``Offer`` to choose, an ``Instance`` to reach over SSH, and a
``Provider`` that searches, rents, watches and gives back. Every call goes through one HTTP path that
retries while the provider is busy, turns failures into plain sentences, and keeps the API key out of
messages.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

import httpx
from pydantic import BaseModel, SecretStr

from core.errors import UserError
from core.settings import Settings

PROVIDERS = ("vast", "runpod")
TITLES = {"vast": "Vast.ai", "runpod": "RunPod"}
TIMEOUT_S = 30.0  # seconds one API call may take before the provider counts as not answering

ProviderName = Literal["vast", "runpod"]
T = TypeVar("T")


class CloudError(UserError):
    """A cloud step failed; the message is plain language for the artist (what happened, what to do)."""


class NoAnswer(CloudError):
    """A request that rents something got no clear answer, so it may have been carried out anyway."""


class Need(BaseModel):
    """What a run asks of a GPU."""

    vram_gb: float  # GPU memory the run needs (per GPU)
    disk_gb: float  # disk the run needs
    gpu: str | None = None  # the artist's --gpu filter: case-insensitive substring of the GPU name ("4090", "A100")
    limit: int = 10


class Offer(BaseModel):
    """A GPU one provider would rent now, at its price."""

    provider: ProviderName
    id: str  # what create() rents: Vast's ask id; RunPod's GPU type id ("NVIDIA GeForce RTX 4090")
    gpu: str  # display name, e.g. "RTX 4090"
    gpus: int = 1
    vram_gb: float  # per GPU, in the GB the card is sold with (24 for an RTX 4090)
    usd_per_hour: float  # total per hour, including the disk where the provider prices it in
    reliability: float | None = None  # 0–1 when the provider says
    disk_gb: float | None = None
    cuda: str | None = None  # newest CUDA the host's driver supports, when known ("12.8")
    location: str | None = None
    cloud: str | None = None  # which of the provider's clouds the price is for (RunPod: SECURE or COMMUNITY)

    def line(self) -> str:
        """One plain line: 'RTX 4090 (24 GB) on Vast.ai — $0.45/hour, reliability 99%, Sweden'."""
        count = f"{self.gpus}× " if self.gpus > 1 else ""
        each = " each" if self.gpus > 1 else ""
        parts = [f"${self.usd_per_hour:.2f}/hour"]
        if self.reliability is not None:
            parts.append(f"reliability {math.floor(self.reliability * 1000) / 10:g}%")
        if self.location:
            parts.append(self.location)
        title = TITLES[self.provider]
        return f"{count}{self.gpu} ({round(self.vram_gb)} GB{each}) on {title} — {', '.join(parts)}"


class Instance(BaseModel):
    """A rented GPU as the provider reports it now."""

    provider: ProviderName
    id: str
    state: Literal["starting", "running", "failed", "gone"]
    ssh_host: str | None = None
    ssh_port: int | None = None
    usd_per_hour: float | None = None
    gpu: str | None = None
    label: str | None = None
    detail: str = ""  # the provider's own status word, for messages ("loading", "exited", "EXITED")

    @property
    def reachable(self) -> bool:
        return self.state == "running" and bool(self.ssh_host) and bool(self.ssh_port)


class Provider(ABC):
    """One GPU marketplace. Subclasses speak its API; the choosing, waiting and HTTP handling are here."""

    name: ClassVar[ProviderName]
    title: ClassVar[str]

    def __init__(
        self, settings: Settings, client: httpx.Client | None = None, *, retries: int = 2, backoff_s: float = 1.0
    ) -> None:
        key: SecretStr | None = getattr(settings, f"{self.name}_api_key")
        if key is None:
            raise CloudError(
                f"No {self.title} API key: set {self.key_setting} in the worker's environment or its .env file "
                f"(you create a key in your {self.title} account settings)."
            )
        self._key = key
        self.settings = settings
        self._owns_client = client is None
        self.client = client or httpx.Client(timeout=TIMEOUT_S)
        self.retries = retries
        self.backoff_s = backoff_s

    @property
    def key_setting(self) -> str:
        return f"LORATRAIN_{self.name.upper()}_API_KEY"

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what callers use -------------------------------------------------------------------------

    def offers(self, need: Need) -> list[Offer]:
        """Offers that fit ``need``, cheapest first (the more reliable first at the same price), at most
        ``need.limit``. The provider filters what its API can; the --gpu substring is matched here."""
        found = [offer for offer in self._search(need) if _gpu_matches(offer.gpu, need.gpu)]
        found.sort(key=lambda offer: (offer.usd_per_hour, -(offer.reliability or 0.0)))
        return found[: need.limit]

    def create(self, offer: Offer, *, image: str, disk_gb: float, public_key: str, label: str) -> str:
        """Rent ``offer``; returns the instance id. ``public_key`` is authorised for SSH on the instance;
        ``label`` should be unique to the run: when the provider fails to answer, the instance it may have
        rented anyway is found by its label, so it is not left running (and billing) unseen."""
        try:
            return self._create(offer, image=image, disk_gb=disk_gb, public_key=public_key, label=label)
        except NoAnswer as err:
            for instance in self.instances():
                if instance.label == label and instance.state != "gone":
                    return instance.id
            raise CloudError(str(err)) from None

    @abstractmethod
    def instance(self, instance_id: str) -> Instance:
        """The instance now; state "gone" when the provider says it does not exist."""

    @abstractmethod
    def instances(self) -> list[Instance]:
        """Every instance of the account, loratrain's or not."""

    @abstractmethod
    def destroy(self, instance_id: str) -> bool:
        """Give the instance back: True when destroyed now, False when it was already gone. Never raises
        for "already gone", so a teardown can always run again."""

    def wait_ready(self, instance_id: str, timeout_s: float, poll_s: float = 5.0) -> Instance:
        """Poll until the instance answers on an SSH endpoint; a CloudError when it fails, vanishes or takes
        longer than ``timeout_s`` (the caller then destroys it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            instance = self.instance(instance_id)
            if instance.reachable:
                return instance
            if instance.state == "gone":
                raise CloudError(
                    f"The {self.title} GPU disappeared before it was ready ({self.title} ended it); "
                    "try again, perhaps with another GPU."
                )
            if instance.state == "failed":
                raise CloudError(
                    f"The {self.title} GPU stopped before it was ready (status: {instance.detail or 'unknown'}); "
                    "it will be given back, so it costs nothing more. Try again, perhaps with another GPU."
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise CloudError(
                    f"The {self.title} GPU was not ready after {_duration(timeout_s)} "
                    f"(last status: {instance.detail or 'unknown'}); it will be given back, so it costs nothing "
                    "more. Try again, perhaps with another GPU."
                )
            time.sleep(min(poll_s, left))

    # --- what a provider implements -----------------------------------------------------------------

    @abstractmethod
    def _search(self, need: Need) -> list[Offer]:
        """Offers that fit ``need`` as far as the API can filter (memory, disk), in any order."""

    @abstractmethod
    def _create(self, offer: Offer, *, image: str, disk_gb: float, public_key: str, label: str) -> str:
        """Rent ``offer`` with one request sent as ``repeatable=False``."""

    # --- HTTP -------------------------------------------------------------------------------------------

    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key.get_secret_value()}"}

    def _call(
        self,
        method: str,
        url: str,
        what: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        repeatable: bool = True,
        missing_ok: bool = False,
    ) -> Any:
        """One API call; returns its JSON answer ({} for an empty body; None for a 404 when ``missing_ok``).
        ``what`` names the step in messages ("the GPU search"). A busy provider (429, 5xx) is asked again
        after a growing pause, except with a 5xx to a request that is not ``repeatable``: the provider
        may have carried it out before failing, and renting twice bills twice."""
        attempt = 0
        while True:
            response = self._send(method, url, what, repeatable, json=json, params=params, headers=headers)
            code = response.status_code
            if code != 429 and code < 500:
                return self._answer(response, what, missing_ok)
            unsure = code != 429 and not repeatable
            if unsure or attempt == self.retries:
                raise (NoAnswer if unsure else CloudError)(
                    f"{self.title} is busy or having trouble (error {code}) during {what}; try again in a few minutes."
                )
            time.sleep(self.backoff_s * 2**attempt)
            attempt += 1

    def _send(self, method: str, url: str, what: str, repeatable: bool, **request: Any) -> httpx.Response:
        # Raised "from None": httpx's own errors carry the URL, and RunPod's GraphQL URL carries the key.
        try:
            return self.client.request(method, url, **request)
        except httpx.TimeoutException:
            error = CloudError if repeatable else NoAnswer
            raise error(f"{self.title} did not answer in time during {what}; try again later.") from None
        except httpx.TransportError:
            raise CloudError(
                f"{self.title} did not answer during {what}: no connection could be made (try again later, "
                "and check this machine's internet connection if it keeps happening)."
            ) from None

    def _answer(self, response: httpx.Response, what: str, missing_ok: bool) -> Any:
        code = response.status_code
        if code == 404 and missing_ok:
            return None
        if code in (401, 403):
            raise CloudError(
                f"{self.title} refused the API key during {what}: check that {self.key_setting} holds the whole "
                f"key and that the key is still active in your {self.title} account."
            )
        try:
            body = response.json() if response.content else {}
        except ValueError:
            if code >= 400:
                raise self._refused(what, None, code) from None
            raise self._shape_error(what, "not JSON") from None
        if code >= 400:
            raise self._refused(what, body, code)
        return body

    def _refused(self, what: str, body: Any, code: int | None = None) -> CloudError:
        """The provider said no; its own words, when it gave any, say why."""
        said = "; ".join(part for part in (f"error {code}" if code else "", _reason(body)) if part)
        return CloudError(f"{self.title} turned down {what}" + (f" ({said})." if said else "."))

    def _shape_error(self, what: str, problem: str) -> CloudError:
        return CloudError(
            f"{self.title} answered {what} in a form loratrain does not understand ({problem}); its API may have "
            "changed, so loratrain needs an update. Please tell whoever looks after it."
        )

    def _field(self, body: Any, key: str, what: str) -> Any:
        """``body[key]``, or a CloudError naming what is missing."""
        if not isinstance(body, dict) or key not in body:
            raise self._shape_error(what, f"no '{key}'")
        return body[key]

    def _parse(self, rows: Any, parse: Callable[[dict], T], what: str) -> list[T]:
        """Each row of a list answer through ``parse``; a row without the documented fields is a CloudError."""
        if not isinstance(rows, list):
            raise self._shape_error(what, "not a list")
        try:
            return [parse(row) for row in rows]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise self._shape_error(what, f"a row without a usable {err}") from None


def keyed(settings: Settings) -> list[str]:
    """The providers whose API key is set: those loratrain may ask for offers and rent from."""
    return [name for name in PROVIDERS if getattr(settings, f"{name}_api_key") is not None]


def provider(settings: Settings, name: str, client: httpx.Client | None = None) -> Provider:
    """The provider called ``name`` ("vast" or "runpod"), ready to use with the settings' key."""
    # Imported here: the providers' modules import this one for the interface.
    from core.cloud.runpod import RunPod
    from core.cloud.vast import Vast

    classes: dict[str, type[Provider]] = {"vast": Vast, "runpod": RunPod}
    if name not in classes:
        known = ", ".join(f"{key} ({TITLES[key]})" for key in PROVIDERS)
        raise CloudError(f"Unknown cloud provider {name!r}: loratrain can rent GPUs from {known}.")
    return classes[name](settings, client)


def _gpu_matches(gpu: str, wanted: str | None) -> bool:
    """The artist's --gpu filter: a substring, ignoring case and spaces ("rtx4090" finds "RTX 4090")."""

    def squash(text: str) -> str:
        return "".join(text.lower().split())

    return wanted is None or squash(wanted) in squash(gpu)


def _reason(body: Any) -> str:
    """The provider's explanation in an error answer (Vast: msg/error; RunPod: error/message; GraphQL: errors)."""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message", ""))[:200]
        for key in ("msg", "error", "message"):
            if body.get(key):
                return str(body[key])[:200]
    return ""


def _duration(seconds: float) -> str:
    return f"{seconds:g} seconds" if seconds < 120 else f"{seconds / 60:.0f} minutes"

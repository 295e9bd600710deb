"""Strength grids drawn by the artist's own ComfyUI through its HTTP API: ``POST /prompt``, poll
``GET /history/{id}``, ``GET /view``. When ComfyUI is not running, the same graphs are saved as workflow
files the artist can load into ComfyUI later, so a grid never fails just because the renderer is off."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from core.errors import UserError
from core.grimoire import write_atomic, write_bytes_atomic

# ComfyUI's models folder behind each file-name input, for saying where a missing file belongs.
_MODEL_FOLDERS = {"ckpt_name": "checkpoints", "lora_name": "loras"}


class ComfyUIError(UserError):
    """ComfyUI answered but refused or failed the work; the message says what it said, plainly."""


def workflow(
    *,
    checkpoint: str,
    lora: str | None,
    weight: float,
    prompt: str,
    negative: str,
    seed: int,
    width: int,
    height: int,
    steps: int = 25,
    cfg: float = 6.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    prefix: str,
) -> dict[str, dict[str, Any]]:
    """One picture of the grid as an API-format graph. Only the LoRA node's strengths differ between the
    columns (the no-LoRA column has no LoRA node at all), so any change in the pictures is the LoRA's."""
    graph: dict[str, dict[str, Any]] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}
    }
    model, clip = ["1", 0], ["1", 1]
    if lora is not None:
        graph["2"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": model,
                "clip": clip,
                "lora_name": lora,
                "strength_model": weight,
                "strength_clip": weight,
            },
        }
        model, clip = ["2", 0], ["2", 1]
    graph |= {
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": prompt}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": negative}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": model,
                "positive": ["3", 0],
                "negative": ["4", 0],
                "latent_image": ["5", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        },
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }
    return graph


class ComfyUI:
    """A client for one ComfyUI server: ``async with ComfyUI(url) as comfy:``."""

    def __init__(self, base_url: str, timeout_s: float = 600, poll_s: float = 0.5) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.client_id = uuid.uuid4().hex
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ComfyUI:
        # Each request is short (the long wait is polling), so a stalled server is noticed quickly.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, sock_connect=5))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._session is not None, "use ComfyUI inside 'async with'"
        return self._session.request(method, self.base_url + path, **kwargs)

    async def alive(self) -> bool:
        for path in ("/system_stats", "/queue"):
            try:
                async with self._request("GET", path, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                return False
        return False

    async def queue(self, graph: dict) -> str:
        """Queue ``graph``; returns its prompt id. A graph ComfyUI refuses raises ``ComfyUIError``."""
        async with self._request("POST", "/prompt", json={"prompt": graph, "client_id": self.client_id}) as resp:
            if resp.status == 400:
                raise ComfyUIError(_refusal(await resp.json(), graph))
            _check(resp, "POST /prompt")
            return (await resp.json())["prompt_id"]

    async def wait(self, prompt_id: str) -> list[dict]:
        """The images of a finished prompt. ComfyUI adds a prompt to its history only once it has run."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            async with self._request("GET", f"/history/{prompt_id}") as resp:
                _check(resp, "GET /history")
                entry = (await resp.json()).get(prompt_id)
            if entry:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise ComfyUIError(_failure(status))
                images = [image for output in entry.get("outputs", {}).values() for image in output.get("images", [])]
                if not images:
                    raise ComfyUIError("ComfyUI finished the workflow but saved no picture.")
                return images
            if time.monotonic() >= deadline:
                raise ComfyUIError(
                    f"ComfyUI did not finish the picture within {self.timeout_s:g} seconds; "
                    "it may be busy with other work or stuck."
                )
            await asyncio.sleep(self.poll_s)

    async def fetch(self, image: dict) -> bytes:
        params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image["type"]}
        async with self._request("GET", "/view", params=params) as resp:
            _check(resp, "GET /view")
            return await resp.read()


def _check(resp: aiohttp.ClientResponse, what: str) -> None:
    if resp.status != 200:
        raise ComfyUIError(f"ComfyUI answered {what} with HTTP {resp.status}.")


def _refusal(body: dict, graph: dict) -> str:
    """ComfyUI's 400 answer as a sentence naming each node and its problem."""
    problems = []
    for node_id, info in (body.get("node_errors") or {}).items():
        kind = info.get("class_type") or graph.get(node_id, {}).get("class_type", "?")
        for error in info.get("errors", []):
            extra = error.get("extra_info") or {}
            folder = _MODEL_FOLDERS.get(extra.get("input_name", ""))
            if error.get("type") == "value_not_in_list" and folder:
                problem = f"ComfyUI has no file {extra.get('received_value')!r} in its models/{folder} folder"
            else:
                problem = ": ".join(filter(None, [error.get("message"), error.get("details")]))
            problems.append(f"node {node_id} ({kind}): {problem}")
    if not problems:
        error = body.get("error")
        problems.append(error.get("message", "?") if isinstance(error, dict) else str(error))
    return "ComfyUI refused the workflow: " + "; ".join(problems) + "."


def _failure(status: dict) -> str:
    for event, data in status.get("messages") or []:
        if event == "execution_error":
            return (
                f"ComfyUI failed while running node {data.get('node_id')} ({data.get('node_type')}): "
                f"{data.get('exception_message', '').strip()}"
            )
        if event == "execution_interrupted":
            return "The picture was interrupted in ComfyUI before it finished."
    return "ComfyUI reported an error but gave no details."


@dataclass(frozen=True)
class Rendered:
    images: dict[str, Path]  # grid name → picture drawn by ComfyUI (those done before any failure)
    saved: list[Path]  # workflow files written because ComfyUI could not draw them
    message: str


async def render(base_url: str | None, graphs: dict[str, dict], out_dir: Path, *, timeout_s: float = 600) -> Rendered:
    """Draw each graph as ``out_dir/{name}.png``; if ComfyUI is not there or fails, save every graph as
    ``out_dir/workflows/{name}.json`` instead and say why. Never raises for a down server."""
    images: dict[str, Path] = {}
    if not base_url:
        problem = "No ComfyUI address is set, so I couldn't draw the pictures."
    else:
        problem = f"ComfyUI wasn't reachable at {base_url}, so I couldn't draw the pictures."
        try:
            async with ComfyUI(base_url, timeout_s=timeout_s) as comfy:
                if await comfy.alive():
                    for name, graph in graphs.items():
                        first = (await comfy.wait(await comfy.queue(graph)))[0]
                        images[name] = out_dir / f"{name}.png"
                        write_bytes_atomic(images[name], await comfy.fetch(first))
                    return Rendered(images, [], f"ComfyUI drew {len(images)} pictures in {out_dir}.")
        except ComfyUIError as err:
            problem = str(err)
        except (aiohttp.ClientError, TimeoutError):
            pass  # it stopped answering midway: the same as not running
    saved = []
    for name, graph in graphs.items():
        saved.append(out_dir / "workflows" / f"{name}.json")
        write_atomic(saved[-1], json.dumps(graph, indent=2))
    return Rendered(
        images,
        saved,
        f"{problem} I saved the workflows in {out_dir / 'workflows'}: drag a file onto the ComfyUI window "
        "(or use Load in its menu) and press Queue to make that picture there.",
    )

"""Strength grids through ComfyUI's HTTP API, against a local stand-in that speaks the API as ComfyUI does
(validation answers, history, /view) and "renders" a tiny picture whose colour encodes the seed and LoRA
strength it was given, so each test can see which graph reached it."""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from core.evaluation.comfyui import ComfyUI, ComfyUIError, render, workflow

CHECKPOINT = "sdxl/base.safetensors"
LORA = "artist/style-v1.safetensors"
OUTPUTS = {  # class_type → number of outputs, as ComfyUI's nodes declare them
    "CheckpointLoaderSimple": 3,
    "LoraLoader": 2,
    "CLIPTextEncode": 1,
    "EmptyLatentImage": 1,
    "KSampler": 1,
    "VAEDecode": 1,
    "SaveImage": 0,
}


def colour(seed: int, strength: float) -> tuple[int, int, int]:
    return seed % 256, round(strength * 100), 7


class FakeComfyUI:
    """Just enough of ComfyUI's server.py and execution.py for the client: ``mode`` is "ok", "error"
    (the sampler fails while running) or "stuck" (never finishes)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.received: list[dict] = []
        self.ready: dict[str, tuple[float, dict]] = {}  # prompt id → (done at, history entry)
        self.files: dict[str, bytes] = {}
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/system_stats", self.system_stats),
                web.post("/prompt", self.post_prompt),
                web.get("/history/{prompt_id}", self.history),
                web.get("/view", self.view),
            ]
        )

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {"os": "posix"}, "devices": []})

    async def post_prompt(self, request: web.Request) -> web.Response:
        graph = (await request.json())["prompt"]
        for node_id, node in graph.items():
            if node["class_type"] not in OUTPUTS:
                error = {
                    "type": "invalid_prompt",
                    "message": f"Cannot execute because node {node['class_type']} does not exist.",
                    "details": f"Node ID '#{node_id}'",
                    "extra_info": {},
                }
                return web.json_response({"error": error, "node_errors": {}}, status=400)
        node_errors = {}
        for node_id, node in graph.items():
            errors = [self.check(name, value, graph) for name, value in node["inputs"].items()]
            if errors := [e for e in errors if e]:
                node_errors[node_id] = {"errors": errors, "dependent_outputs": ["8"], "class_type": node["class_type"]}
        if node_errors:
            error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"}
            return web.json_response(
                {"error": error | {"details": "", "extra_info": {}}, "node_errors": node_errors}, status=400
            )
        self.received.append(graph)
        prompt_id = str(uuid.uuid4())
        self.ready[prompt_id] = (time.monotonic() + 0.05, self.run(prompt_id, graph))
        return web.json_response({"prompt_id": prompt_id, "number": len(self.received), "node_errors": {}})

    @staticmethod
    def check(name: str, value: object, graph: dict) -> dict | None:
        if isinstance(value, list):
            source, index = value
            if source not in graph or index >= OUTPUTS[graph[source]["class_type"]]:
                return {
                    "type": "exception_during_inner_validation",
                    "message": "Exception when validating inner node",
                    "details": repr(source),
                    "extra_info": {"input_name": name},
                }
            return None
        choices = {"ckpt_name": [CHECKPOINT], "lora_name": [LORA]}.get(name)
        if choices is not None and value not in choices:
            return {
                "type": "value_not_in_list",
                "message": "Value not in list",
                "details": f"{name}: '{value}' not in {choices}",
                "extra_info": {"input_name": name, "received_value": value},
            }
        return None

    def run(self, prompt_id: str, graph: dict) -> dict:
        if self.mode == "error":
            failure = {
                "prompt_id": prompt_id,
                "node_id": "6",
                "node_type": "KSampler",
                "exception_message": "Allocation on device 0 would exceed allowed memory. (out of memory)\n",
                "exception_type": "torch.OutOfMemoryError",
                "traceback": [],
            }
            messages = [["execution_start", {"prompt_id": prompt_id}], ["execution_error", failure]]
            return {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": messages}}
        nodes = {node["class_type"]: node["inputs"] for node in graph.values()}
        strength = nodes.get("LoraLoader", {}).get("strength_model", 0.0)
        picture = io.BytesIO()
        Image.new("RGB", (8, 8), colour(nodes["KSampler"]["seed"], strength)).save(picture, "PNG")
        save_id = next(node_id for node_id, node in graph.items() if node["class_type"] == "SaveImage")
        filename = f"{nodes['SaveImage']['filename_prefix']}_{len(self.files) + 1:05}_.png"
        self.files[filename] = picture.getvalue()
        image = {"filename": filename, "subfolder": "", "type": "output"}
        status = {"status_str": "success", "completed": True, "messages": []}
        return {"outputs": {save_id: {"images": [image]}}, "status": status}

    async def history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        done_at, entry = self.ready.get(prompt_id, (0.0, None))
        if entry is None or self.mode == "stuck" or time.monotonic() < done_at:
            return web.json_response({})
        return web.json_response({prompt_id: entry})

    async def view(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        if query.get("type") != "output" or query.get("subfolder") != "" or query["filename"] not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[query["filename"]], content_type="image/png")


@pytest.fixture
async def comfy() -> AsyncIterator[tuple[FakeComfyUI, str]]:
    fake = FakeComfyUI()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


def grid(lora: str = LORA, seed: int = 1234) -> dict[str, dict]:
    """The no-LoRA column and three weights, as the strength grid asks for them."""
    common = dict(
        checkpoint=CHECKPOINT, prompt="a lighthouse at dusk", negative="blurry", seed=seed, width=64, height=64
    )
    graphs = {"none": workflow(lora=None, weight=0.0, prefix="grid/none", **common)}
    for weight in (0.3, 0.7, 1.0):
        graphs[f"w{weight}"] = workflow(lora=lora, weight=weight, prefix=f"grid/w{weight}", **common)
    return graphs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_saved(result, graphs: dict, out_dir: Path) -> None:
    assert result.saved == [out_dir / "workflows" / f"{name}.json" for name in graphs]
    assert {path.stem: json.loads(path.read_text()) for path in result.saved} == graphs
    assert "drag a file onto the ComfyUI window" in result.message


def test_workflow_links_every_node_as_comfyui_expects() -> None:
    graphs = grid()
    for graph in graphs.values():
        for node in graph.values():
            for value in node["inputs"].values():
                if isinstance(value, list):
                    source, index = value
                    assert isinstance(source, str) and index < OUTPUTS[graph[source]["class_type"]]
        assert json.loads(json.dumps(graph)) == graph
    assert {
        node["inputs"]["seed"] for g in graphs.values() for node in g.values() if node["class_type"] == "KSampler"
    } == {1234}

    lora = graphs["w0.7"]
    assert lora["2"] == {
        "class_type": "LoraLoader",
        "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": LORA, "strength_model": 0.7, "strength_clip": 0.7},
    }
    assert lora["6"]["inputs"]["model"] == ["2", 0] and lora["3"]["inputs"]["clip"] == ["2", 1]
    assert {k: lora["6"]["inputs"][k] for k in ("steps", "cfg", "sampler_name", "scheduler", "denoise")} == {
        "steps": 25,
        "cfg": 6.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1.0,
    }
    assert lora["5"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}
    assert lora["8"]["inputs"] == {"images": ["7", 0], "filename_prefix": "grid/w0.7"}

    none = graphs["none"]
    assert "LoraLoader" not in {node["class_type"] for node in none.values()}
    assert none["6"]["inputs"]["model"] == ["1", 0] and none["4"]["inputs"]["clip"] == ["1", 1]


async def test_render_draws_each_column_from_its_own_graph(comfy, tmp_path: Path) -> None:
    fake, url = comfy
    graphs = grid()
    result = await render(url, graphs, tmp_path)

    assert fake.received == list(graphs.values())
    assert result.saved == [] and "ComfyUI drew 4 pictures" in result.message
    assert result.images == {name: tmp_path / f"{name}.png" for name in graphs}
    for name, strength in {"none": 0.0, "w0.3": 0.3, "w0.7": 0.7, "w1.0": 1.0}.items():
        assert Image.open(result.images[name]).getpixel((0, 0)) == colour(1234, strength)


async def test_a_lora_comfyui_lacks_is_named_and_the_workflows_saved(comfy, tmp_path: Path) -> None:
    _, url = comfy
    graphs = grid(lora="artist/style-v2.safetensors")
    result = await render(url, graphs, tmp_path)

    assert result.images == {"none": tmp_path / "none.png"}  # drawn before the first LoRA column was refused
    assert "ComfyUI refused the workflow: node 2 (LoraLoader)" in result.message
    assert "'artist/style-v2.safetensors' in its models/loras folder" in result.message
    assert_saved(result, graphs, tmp_path)


async def test_other_refusals_pass_on_comfyuis_words(comfy) -> None:
    _, url = comfy
    broken = grid()["w0.3"]
    broken["7"]["inputs"]["vae"] = ["1", 5]
    async with ComfyUI(url) as client:
        with pytest.raises(ComfyUIError, match=r"node 7 \(VAEDecode\): Exception when validating inner node"):
            await client.queue(broken)
        with pytest.raises(ComfyUIError, match="node Upscaler does not exist"):
            await client.queue(broken | {"9": {"class_type": "Upscaler", "inputs": {}}})


async def test_an_execution_error_is_said_plainly(comfy, tmp_path: Path) -> None:
    fake, url = comfy
    fake.mode = "error"
    graphs = {"w0.7": grid()["w0.7"]}
    result = await render(url, graphs, tmp_path)

    assert result.message.startswith(
        "ComfyUI failed while running node 6 (KSampler): Allocation on device 0 would exceed allowed memory."
    )
    assert_saved(result, graphs, tmp_path)


@pytest.mark.parametrize("address_set", [False, True])
async def test_no_comfyui_saves_the_workflows(tmp_path: Path, address_set: bool) -> None:
    url = f"http://127.0.0.1:{free_port()}" if address_set else None  # a port nothing listens on
    graphs = grid()
    result = await render(url, graphs, tmp_path)

    assert result.images == {}
    if url:
        assert result.message.startswith(f"ComfyUI wasn't reachable at {url},")
        async with ComfyUI(url) as client:
            assert not await client.alive()
    else:
        assert result.message.startswith("No ComfyUI address is set")
    assert_saved(result, graphs, tmp_path)


async def test_a_picture_that_never_finishes_times_out(comfy, tmp_path: Path) -> None:
    fake, url = comfy
    fake.mode = "stuck"
    graphs = {"none": grid()["none"]}
    result = await render(url, graphs, tmp_path, timeout_s=0.3)

    assert result.message.startswith("ComfyUI did not finish the picture within 0.3 seconds")
    assert_saved(result, graphs, tmp_path)

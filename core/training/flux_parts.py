"""kohya trains Flux from four files — the model, the CLIP-L and T5-XXL text encoders and the autoencoder
(``--clip_l``, ``--t5xxl``, ``--ae``; kohya-ss/sd-scripts docs/flux_train_network.md) — where the other
trainers take one diffusers folder. They are looked for where Flux downloads and ComfyUI keep them:
beside the model, or in the ``clip``, ``text_encoders`` and ``vae`` folders next to its folder.
"""

from __future__ import annotations

from pathlib import Path

PATTERNS = {  # kohya's option → file names its parts are published under, most specific first
    "clip_l": ("clip_l*.safetensors",),
    "t5xxl": ("t5xxl*.safetensors", "t5*xxl*.safetensors"),
    "ae": ("ae.safetensors", "flux*ae*.safetensors", "*vae*.safetensors"),
}
FOLDERS = (".", "../clip", "../text_encoders", "../vae")
WHAT = {"clip_l": "the CLIP-L text encoder", "t5xxl": "the T5-XXL text encoder", "ae": "the autoencoder (ae)"}


def find(model: str) -> tuple[dict[str, str], list[str]]:
    """kohya's part options for a Flux model file, and a plain problem for each part not found."""
    path = Path(model)
    if not path.is_file():
        return {}, [
            f"kohya trains Flux from files on this machine, and {model} is not one: give the Flux model's "
            ".safetensors file with --model, with its text encoders and autoencoder beside it"
        ]
    parts, problems = {}, []
    for option, patterns in PATTERNS.items():
        found = next((hit for folder in FOLDERS for pattern in patterns
                      for hit in sorted((path.parent / folder).glob(pattern)) if hit != path), None)  # fmt: skip
        if found:
            parts[option] = str(found.resolve())
        else:
            problems.append(
                f"kohya needs {WHAT[option]} for Flux as its own file, and none was found beside {path.name} or "
                f"in the clip, text_encoders or vae folders next to it ({', '.join(patterns)})"
            )
    return parts, problems

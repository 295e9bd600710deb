"""A stand-in for ostris/ai-toolkit's ``run.py`` (tests only): reads the YAML job as ai-toolkit does and
prints what ai-toolkit prints (its progress bar, its save line), or fails the way a real run fails
when memory runs out at a batch size above 1. ``STANDIN_OOM`` picks the failure:

- ``cuda``: a traceback ending in newer torch's ``torch.OutOfMemoryError: CUDA out of memory.``
- ``cuda-old``: older torch's ``torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate …``
- ``skips``: ai-toolkit's own three skipped batches, then its give-up error
- ``killed``: killed without a word, as the host's memory killer does (signal 9)

``STANDIN_STEPS_SEEN`` names a file each run appends its batch size to, so a test can see the retries.
"""

import os
import signal
import sys
import time
from pathlib import Path

import yaml

config = yaml.safe_load(Path(sys.argv[1]).read_text(encoding="utf-8"))
process = config["config"]["process"][0]
name, train = config["config"]["name"], process["train"]
folder = Path(process["training_folder"]) / name
if seen := os.environ.get("STANDIN_STEPS_SEEN"):
    with open(seen, "a", encoding="utf-8") as out:
        out.write(f"{train['batch_size']} {train['steps']}\n")
print(f"Running  1 job\n{{'type': 'sd_trainer', 'training_folder': '{process['training_folder']}'}}", flush=True)
failure = os.environ.get("STANDIN_OOM", "")
if failure and train["batch_size"] > 1:
    print(f"{name}:   0%|          | 0/{train['steps']} [00:00<?, ?it/s]", flush=True)
    if failure == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if failure == "skips":
        for n in (1, 2, 3):
            print(f"# OOM during training step, skipping batch {n}/3 #", flush=True)
        print("Error running job: OOM during training step 3 times in a row, aborting training", flush=True)
        print("RuntimeError: OOM during training step 3 times in a row, aborting training", flush=True)
        sys.exit(1)
    print('Traceback (most recent call last):\n  File "run.py", line 90, in <module>', flush=True)
    if failure == "cuda-old":
        print(
            "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 11.76 GiB "
            "total capacity; 10.90 GiB already allocated; 15.25 MiB free)",
            flush=True,
        )
    else:
        print(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 18.00 MiB. GPU 0 has a total "
            "capacity of 44.53 GiB of which 15.25 MiB is free.",
            flush=True,
        )
    sys.exit(1)
folder.mkdir(parents=True, exist_ok=True)
steps = train["steps"]
for step in range(1, steps + 1):
    loss = 0.2 / step
    share = round(100 * step / steps)
    print(
        f"\r{name}: {share:3d}%|#####     | {step}/{steps} [00:0{step}<00:01,  1.00s/it, lr: 1.0e-04 loss: {loss:.3e}]",
        end="",
        flush=True,
    )
    time.sleep(0.01)
final = folder / f"{name}.safetensors"
final.write_bytes(b"stand-in LoRA")
print(f"\nSaved checkpoint to {final}", flush=True)

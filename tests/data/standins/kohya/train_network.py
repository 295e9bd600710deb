"""A stand-in for kohya sd-scripts' ``train_network.py`` (tests only), started by ``accelerate launch``
as the real one is. It reads ``--config_file`` and the dataset TOML it names as kohya does, checks
the keys loratrain depends on (a dry run must carry a step limit and no epoch count, which would win
over it), and prints what kohya prints: its header, ``epoch N/M`` lines, the tqdm bar redrawn with
``\\r`` and ``avr_loss=``, ``saving checkpoint:`` and ``model saved.``; the files it names are written.
"""

import argparse
import sys
import time
import tomllib
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--config_file", required=True)
config = tomllib.loads(Path(parser.parse_args().config_file).read_text(encoding="utf-8"))
dataset = tomllib.loads(Path(config["dataset_config"]).read_text(encoding="utf-8"))
if config.get("caption_extension") != ".txt":
    print("No caption file found for 10 images. Training will continue without captions.", flush=True)
images = len(list(Path(dataset["datasets"][0]["subsets"][0]["image_dir"]).glob("*.jpg")))
repeats = dataset["datasets"][0]["subsets"][0]["num_repeats"]
batch = dataset["datasets"][0]["batch_size"]
per_epoch = -(-images * repeats // batch)
if "max_train_epochs" in config:
    epochs, total = config["max_train_epochs"], per_epoch * config["max_train_epochs"]
else:
    total = config["max_train_steps"]
    epochs = -(-total // per_epoch)
output, name = Path(config["output_dir"]), config["output_name"]
output.mkdir(parents=True, exist_ok=True)
start_epoch = 0
if resume := config.get("resume"):
    start_epoch = int(Path(resume).name.split("-")[-2])
    print(f"resume training from local state: {resume}", flush=True)
print("running training / 学習開始", flush=True)
print(f"  num train images * repeats / 学習画像の数×繰り返し回数: {images * repeats}", flush=True)
print(f"  num batches per epoch / 1epochのバッチ数: {per_epoch}", flush=True)
print(f"  num epochs / epoch数: {epochs}", flush=True)
print(f"  batch size per device / バッチサイズ: {batch}", flush=True)
print(f"  total optimization steps / 学習ステップ数: {total}", flush=True)
step = start_epoch * per_epoch
for epoch in range(start_epoch + 1, epochs + 1):
    print(f"\nepoch {epoch}/{epochs}", flush=True)
    for _ in range(per_epoch):
        if step == total:
            break
        step += 1
        loss = 0.12 - 0.001 * step
        sys.stdout.write(
            f"\rsteps: {round(100 * step / total):3d}%|###   | {step}/{total} [00:0{step % 10}<00:01,  "
            f"2.00it/s, avr_loss={loss:.4f}]"
        )
        sys.stdout.flush()
        time.sleep(0.01)
    every = config.get("save_every_n_epochs")
    if every and epoch % every == 0 and epoch < epochs:
        path = output / f"{name}-{epoch:06d}.safetensors"
        path.write_bytes(b"stand-in checkpoint")
        print(f"\nsaving checkpoint: {path}", flush=True)
        if config.get("save_state"):
            (output / f"{name}-{epoch:06d}-state").mkdir(exist_ok=True)
            print(f"saving state at epoch {epoch}", flush=True)
final = output / f"{name}.safetensors"
final.write_bytes(b"stand-in LoRA")
print(f"\nsaving checkpoint: {final}\nmodel saved.", flush=True)

"""Flags shared by several commands, defined once so every verb spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

Encoder = typer.Option(None, "--encoder", "-e", help="Registry name (see `anonfeat encoders`) or "
                       "timm:<model>; inferred from --checkpoint when omitted.")
Checkpoint = typer.Option(None, "--checkpoint", "-c", help="Official VideoMAE .pth, Hugging Face "
                          "directory/.safetensors, mmaction2 .pth, a plain state dict, or a Hugging Face id "
                          "org/name[@revision] (cache first; HF_HOME, HF_HUB_OFFLINE apply). With timm:<model>: "
                          "a weights file, or `pretrained` for timm's own weights.", exists=False)
RandomInit = typer.Option(False, "--random-init", help="Use seeded random weights (tests and demos only).")
Device = typer.Option("auto", "--device", help="auto, cpu or cuda:N.")
Decoder = typer.Option("auto", "--decoder", help="Video decoding: cpu (PyAV), gpu (NVDEC; not in this build) "
                       "or auto (gpu when the device is CUDA and the gpu decoder is installed, else cpu).")
BatchSize = typer.Option(16, "--batch-size", "-b", min=1, help="Clips per forward pass.")
Workers = typer.Option(1, "--workers", "-w", min=0, help="Decoding worker processes (0: decode in the main process).")
Compile = typer.Option(None, "--compile/--no-compile", help="torch.compile the encoder (default: on "
                       "CUDA, where it is ~1.5x faster after ~30 s of compiling; off on the CPU).")
Dtype = typer.Option("float16", "--dtype", help="Stored feature precision: float16 or float32.")
Progress = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")
StaticClips = typer.Option(0, "--static-clips", min=0, help="Also store N static clips per video "
                           "(one frame repeated), needed by train-adapter and audit.")
Json = typer.Option(False, "--json", help="Print JSON instead of a table.")
SplitSeed = typer.Option(0, "--split-seed", help="Seed of the train/attacker/test split (50/25/25, stratified on "
                         "action) derived when the labels have no split column; every command derives the same "
                         "one from the same labels and seed. Separate from --seed.")
OptionalPath = Optional[Path]

# Clip sampling, shared by extract and prune.
ClipLen = typer.Option(None, "--clip-len", min=1, help="Frames per clip (default: the model's).")
FrameStride = typer.Option(4, "--frame-stride", min=1, help="Sampling rate: frames between a clip's frames.")
ClipStride = typer.Option(None, "--clip-stride", min=1, help="Frames between clip starts (default: clip_len x frame_stride).")
NumClips = typer.Option(None, "--num-clips", min=1, help="N evenly spaced clips instead of sliding windows.")
Resize = typer.Option("short", "--resize", help="short: short side + centre crop; full: stretch the frame.")
Compression = typer.Option(None, "--compression", help="gzip or lzf (default: none).")
KeepShards = typer.Option(False, "--keep-shards", help="Under torchrun: keep the per-rank shard stores "
                          "(STORE.shards/) after merging them into STORE.")

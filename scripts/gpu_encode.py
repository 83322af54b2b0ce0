"""Encode-only throughput of one encoder under the ways of running it on a GPU, as JSON.

`anonfeat bench` measures the path extract takes (fp32 weights under bf16 autocast, SDPA's own
backend choice). This script times that path against the alternatives worth trying on a card:
batch sizes, bf16 weights, each SDPA backend, torch.compile, a captured CUDA graph, and the
card's own bf16 matrix-product rate as the measured ceiling. Every variant runs on the same
random clips; a variant that fails is recorded with its error and the rest go on.

    python scripts/gpu_encode.py --encoder videomae-b --json encode.json

On a CPU it runs the eager variants only (a quick check of the script itself).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from anonfeat.bench.run import bf16_peak_tflops, encoder_flops_per_clip
from anonfeat.device import autocast, resolve_device
from anonfeat.encoders import load_encoder


def timed(step, device: torch.device, min_seconds: float, warmup: int = 3) -> tuple[float, int]:
    """Seconds per call of `step` (after `warmup` calls), and how many calls were timed."""
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    calls, started = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        if calls % 5 == 0 or device.type != "cuda":
            sync()
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                return elapsed / calls, calls


def matmul_tflops(device: torch.device, n: int = 8192) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds, _ = timed(lambda: a @ b, device, 1.0)
    return 2 * n ** 3 / seconds / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="videomae-b")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="32,64,128")
    parser.add_argument("--batch-size", type=int, default=64, help="batch of the non-default variants")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per variant")
    parser.add_argument("--variants", default="eager,sdpa,bf16,graph,compile",
                        help="comma-separated groups: eager, patch-embed, sdpa, bf16, graph, compile, "
                             "compile-batch, autotune (slow to compile)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    encoder = load_encoder(args.encoder, None, random_init=True, device=device)
    cfg = encoder.config
    flops = encoder_flops_per_clip(cfg)
    report: dict = {"encoder": cfg.name, "input": f"{cfg.clip_len}x{cfg.img_size}", "device": str(device),
                    "torch": torch.__version__, "gflops_per_clip": flops / 1e9, "variants": []}
    if cuda:
        report["gpu"] = torch.cuda.get_device_name(device)
        report["bf16_peak_tflops"] = bf16_peak_tflops(device)
        report["matmul_bf16_tflops_measured"] = matmul_tflops(device)
        print(f"{report['gpu']}: 8192^3 bf16 matmul {report['matmul_bf16_tflops_measured']:.0f} TFLOP/s "
              f"(datasheet {report['bf16_peak_tflops']})", flush=True)

    def clips(batch: int, dtype=torch.bfloat16 if cuda else torch.float32) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        return torch.randn(batch, 3, cfg.clip_len, cfg.img_size, cfg.img_size, generator=gen).to(device, dtype)

    def record(name: str, batch: int, make_step, part_flops: float | None = None) -> None:
        """Time one variant; `part_flops`: FLOPs per clip of a part of the model timed alone."""
        entry = {"variant": name, "batch": batch, "whole_model": part_flops is None}
        per_clip = flops if part_flops is None else part_flops
        try:
            started = time.perf_counter()
            step = make_step()
            entry["setup_s"] = time.perf_counter() - started
            seconds, calls = timed(step, device, args.seconds)
            entry.update(cps=batch / seconds, ms_per_batch=seconds * 1e3, calls=calls,
                         tflops=per_clip * batch / seconds / 1e12)
            if cuda and report.get("bf16_peak_tflops"):
                entry["peak_fraction"] = entry["tflops"] / report["bf16_peak_tflops"]
                entry["measured_matmul_fraction"] = entry["tflops"] / report["matmul_bf16_tflops_measured"]
            if cuda:
                entry["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
        except Exception as exc:  # noqa: BLE001 - one variant's failure is a result, not the end
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
        report["variants"].append(entry)
        shown = f"{entry['cps']:8.1f} clips/s  {entry['tflops']:6.1f} TFLOP/s" if "cps" in entry else entry["error"]
        print(f"{name:<34} b{batch:<4} {shown}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    def eager(model, x, context=contextlib.nullcontext):
        def step():
            with torch.inference_mode(), autocast(device), context():
                return model(x)
        return step

    chosen = set(args.variants.split(",")) if args.variants else None

    def wanted(group: str) -> bool:
        return chosen is None or group in chosen

    b = args.batch_size
    if wanted("eager"):
        for batch in (int(v) for v in args.batch_sizes.split(",")):
            record("autocast (extract's path)", batch, lambda: eager(encoder, clips(batch)))
    if wanted("patch-embed"):
        t, p = cfg.tubelet[0], cfg.tubelet[1]
        record("patch embedding alone", b, lambda: eager(encoder.patch_embed, clips(b)),
               part_flops=2.0 * cfg.num_tokens * cfg.embed_dim * 3 * t * p * p)
    if not cuda:
        chosen = set()
    if wanted("sdpa"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            context = lambda backend=backend: sdpa_kernel([getattr(SDPBackend, backend)])  # noqa: E731
            record(f"autocast, sdpa {backend.lower()}", b, lambda: eager(encoder, clips(b), context))
    half = None
    if wanted("bf16") or wanted("graph") or wanted("compile"):
        half = load_encoder(args.encoder, None, random_init=True, device=device).to(torch.bfloat16)
    if wanted("bf16"):
        record("bf16 weights + autocast", b, lambda: eager(half, clips(b)))
        record("bf16 weights + autocast", 2 * b, lambda: eager(half, clips(2 * b)))
    if wanted("graph"):
        def graphed(model):
            x = clips(b)
            with torch.inference_mode(), autocast(device):
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        model(x)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = model(x)
            return lambda: (graph.replay(), out)[1]
        record("bf16 weights, CUDA graph", b, lambda: graphed(half))

    def compiled(model, batch: int, mode: str | None = None):
        torch._dynamo.reset()  # each variant compiles afresh, for its own batch size
        fn = torch.compile(model, mode=mode, dynamic=False)
        step = eager(fn, clips(batch))
        step()  # the compilation itself, counted in setup_s
        return step
    if wanted("compile"):
        record("bf16 weights + torch.compile", b, lambda: compiled(half, b))
        record("autocast + torch.compile", b, lambda: compiled(encoder, b))
        record("bf16 weights + compile reduce-overhead", b, lambda: compiled(half, b, "reduce-overhead"))
    if wanted("compile-batch"):
        for batch in (b, 2 * b):
            record("autocast + torch.compile", batch, lambda: compiled(encoder, batch))
    if wanted("autotune"):
        record("autocast + compile max-autotune-no-cudagraphs", b,
               lambda: compiled(encoder, b, "max-autotune-no-cudagraphs"))
    best = max((v for v in report["variants"] if "cps" in v and v["whole_model"]), key=lambda v: v["cps"], default=None)
    report["best"] = best
    if best:
        print(f"best: {best['variant']} b{best['batch']}: {best['cps']:.1f} clips/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""`anonfeat bench`: decode, encode, end-to-end, naive and sanitize throughput, extract peak memory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from anonfeat.cli import options as opt
from anonfeat.cli.app import app, console, err_console


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


@app.command("bench")
def bench_command(
    encoder: str = typer.Option("videomae-tiny", "--encoder", "-e", help="Registry name or timm:<model>."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="Weights to load (default: seeded random weights; speed does not depend on them)."),
    device: str = opt.Device,
    decoder: str = opt.Decoder,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
    batch_size: int = opt.BatchSize,
    workers: int = opt.Workers,
    videos: int = typer.Option(8, "--videos", min=1, help="Generated videos in the throughput set."),
    frames: int = typer.Option(300, "--frames", min=1, help="Frames per generated video (at 30 fps)."),
    size: str = typer.Option("640x360", "--size", help="WIDTHxHEIGHT of the throughput set."),
    frame_stride: int = typer.Option(2, "--frame-stride", min=1, help="Frames between a clip's frames."),
    clip_stride: Optional[int] = typer.Option(None, "--clip-stride", min=1,
                                              help="Frames between clip starts (default: clip_len x frame_stride / 4: dense, each frame in 4 clips)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Rounds of measurements (interleaved); medians are reported."),
    naive_videos: int = typer.Option(2, "--naive-videos", min=1, help="Videos the (slow) naive reference runs on."),
    long_seconds: float = typer.Option(600.0, "--long-seconds", min=1.0, help="Length of the long video of the memory test."),
    short_seconds: float = typer.Option(10.0, "--short-seconds", min=0.1, help="Length of the short video of the memory test."),
    long_size: str = typer.Option("1280x720", "--long-size", help="WIDTHxHEIGHT of the memory-test videos."),
    skip_memory: bool = typer.Option(False, "--skip-memory", help="Skip the peak-memory runs (quick checks)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Keep the generated videos here and reuse them."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads of this process (default: torch's)."),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", help="The GPU's bf16 peak (default: looked up by name)."),
    compile: Optional[bool] = opt.Compile,
) -> None:
    """Measure decode, encode, end-to-end and naive throughput, sanitize speed and extract peak memory."""
    from rich.table import Table

    from anonfeat.bench import BenchOptions, run_bench, targets

    options = BenchOptions(encoder=encoder, checkpoint=checkpoint, device=device, batch_size=batch_size,
                           workers=workers, videos=videos, frames=frames, size=size, frame_stride=frame_stride,
                           clip_stride=clip_stride, repeats=repeats, naive_videos=naive_videos,
                           long_seconds=long_seconds, short_seconds=short_seconds, long_size=long_size,
                           skip_memory=skip_memory, cache_dir=cache_dir, threads=threads, peak_tflops=peak_tflops,
                           compile=compile, decoder=decoder)
    result = run_bench(options, log=lambda message: err_console.print(f"[dim]bench:[/] {message}", highlight=False))
    s = result["settings"]
    samples = result["samples"]

    def spread(name: str) -> str:
        values = samples[name]
        return " ".join(_fmt(v) for v in values)

    table = Table(title=f"anonfeat bench: {s['encoder']} {s['input']}, batch {s['batch_size']}, "
                        f"{s['workers']} worker(s), stride {s['frame_stride']}/{s['clip_stride']}, "
                        f"{result['device']}{', compiled' if s['compile'] else ''}, decoder {result['decoder']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("rounds / detail")
    table.add_row("decode_cps", _fmt(result["decode_cps"]), "clips/s", spread("decode"))
    table.add_row("encode_cps", _fmt(result["encode_cps"]), "clips/s", spread("encode"))
    table.add_row("e2e_cps", _fmt(result["e2e_cps"]), "clips/s", spread("e2e"))
    table.add_row("  waiting for frames", _fmt(result["e2e_decode_wait_s"], 2), "s",
                  f"of {_fmt(s['clips_per_round'] / result['e2e_cps'], 2)} s per e2e run; waiting for the model "
                  f"{_fmt(result['e2e_device_wait_s'], 2)} s")
    table.add_row("naive_cps", _fmt(result["naive_cps"]), "clips/s", spread("naive"))
    table.add_row("sanitize_cps", _fmt(result["sanitize_cps"]), "clips/s",
                  f"videos of {s['sanitize_sequence_length']} clips, padded groups; "
                  f"one video per pass {_fmt(result['sanitize_per_video_cps'])}")
    table.add_row("speedup_vs_naive", _fmt(result["speedup_vs_naive"], 2), "x", "e2e / naive")
    rounds = " ".join(_fmt(v, 2) for v in result["overlap_efficiency_rounds"])
    table.add_row("overlap_efficiency", _fmt(result["overlap_efficiency"], 2), "",
                  f"e2e / bound ({_fmt(result['overlap_bound_cps'])} clips/s); per round {rounds}")
    mem = result["memory"]
    for name in ("short", "long"):
        if name in mem:
            m = mem[name]
            detail = (f"main {_fmt(m['main_mb'], 0)} + workers' private "
                      f"{' + '.join(_fmt(w, 0) for w in m['workers_private_mb']) or '0'}; sum of peaks "
                      f"{_fmt(m['rss_sum_mb'], 0)}, PSS {_fmt(m['pss_mb'], 0)} MB")
        else:
            detail = "skipped (--skip-memory)"
        table.add_row(f"rss_{name}_mb", _fmt(result[f"rss_{name}_mb"], 0), "MB", detail)
    table.add_row("encode_tflops", _fmt(result["encode_tflops"], 3), "TFLOP/s",
                  f"{_fmt(result['encode_gflops_per_clip'], 1)} GFLOP per clip")
    console.print(table)

    checks = Table(title="targets")
    checks.add_column("figure")
    checks.add_column("target")
    checks.add_column("")
    for name, target, met in targets(result):
        checks.add_row(name, target, "[green]pass[/]" if met else "[dim]n/a[/]" if met is None else "[red]fail[/]")
    console.print(checks)
    m = result["machine"]
    console.print(f"machine: {m['cpu']} ({m['cpu_cores']} cores), {m.get('gpu', 'no GPU')}, "
                  f"torch {m['torch']} ({m['torch_threads']} threads)", highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
        console.print(f"wrote {json_out}")

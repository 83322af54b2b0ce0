"""`anonfeat bench`: decode, encode, end-to-end, naive and sanitize throughput, extract peak memory."""

from __future__ import annotations

import math

from anonfeat.cli.app import app
from anonfeat.cli.options import command
from anonfeat.cli.output import Output
from anonfeat.options import BenchOptions


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


@command(app, "bench", BenchOptions)
def bench_command(options: BenchOptions = None, ui: Output = None) -> None:
    """Measure decode, encode, end-to-end and naive throughput, sanitize speed and extract peak memory."""
    from rich.table import Table

    from anonfeat.bench import run_bench, targets

    result = run_bench(options, log=lambda message: ui.status(f"[dim]bench:[/] {message}"))
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
    ui.result(table)

    checks = Table(title="targets")
    checks.add_column("figure")
    checks.add_column("target")
    checks.add_column("")
    for name, target, met in targets(result):
        checks.add_row(name, target, "[green]pass[/]" if met else "[dim]n/a[/]" if met is None else "[red]fail[/]")
    m = result["machine"]
    ui.result(checks, f"machine: {m['cpu']} ({m['cpu_cores']} cores), {m.get('gpu', 'no GPU')}, "
                      f"torch {m['torch']} ({m['torch_threads']} threads)")
    ui.emit(result)

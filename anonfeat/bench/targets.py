"""The targets a `anonfeat bench` result is checked against (printed by the command with each figure)."""

from __future__ import annotations


def targets(result: dict) -> list[tuple[str, str, bool | None]]:
    """(figure, target, met) for the issue's targets; met is None when not measured."""
    cuda = result["device"].startswith("cuda")
    rows = [("overlap_efficiency", ">= 0.8" if cuda else ">= 0.9",
             result["overlap_efficiency"] >= (0.8 if cuda else 0.9))]
    dense = result["settings"]["clip_stride"] < result["settings"]["clip_len"] * result["settings"]["frame_stride"]
    rows.append(("speedup_vs_naive", ">= 2 (dense)" if dense else ">= 2 (dense only; this run is not dense)",
                 result["speedup_vs_naive"] >= 2 if dense else None))
    if result["rss_short_mb"] is not None:
        rows.append(("rss_long_mb", f"<= 1.2 x rss_short_mb = {1.2 * result['rss_short_mb']:.0f}",
                     result["rss_long_mb"] <= 1.2 * result["rss_short_mb"]))
    else:
        rows.append(("rss_long_mb", "<= 1.2 x rss_short_mb", None))
    if cuda:
        fraction = result["encode_peak_fraction"]
        rows.append(("encode_peak_fraction", ">= 0.40 of bf16 peak (videomae-b 16x224)",
                     None if fraction is None else fraction >= 0.4))
    return rows

"""`anonfeat encoders`: the registry as a table."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer
from rich.table import Table

from anonfeat.cli.app import app
from anonfeat.cli.options import command
from anonfeat.cli.output import Output


@command(app, "encoders")
def encoders_command(
    names: Annotated[Optional[List[str]], typer.Argument(
        help="Describe these encoders instead (e.g. timm:<model>).")] = None,
    ui: Output = None,
) -> None:
    """List the registered encoders with their dims, depth, clip length, input size, frame resize
    (interpolation and crop_pct: the short side goes to input / crop_pct, then a centre crop) and parameters."""
    from anonfeat.encoders import get_config, list_encoders, parameter_count

    configs = [get_config(name) for name in names] if names else list_encoders()
    rows = [(c, parameter_count(c)) for c in configs]
    table = Table(title="Registered encoders (plus timm:<model_name>, frame-wise)")
    for column in ("name", "dim", "depth", "heads", "clip", "tubelet", "input", "interpolation", "crop_pct",
                   "params"):
        table.add_column(column, justify="left" if column in ("name", "interpolation") else "right")
    for cfg, params in rows:
        table.add_row(cfg.name, str(cfg.embed_dim), str(cfg.depth), str(cfg.num_heads), str(cfg.clip_len),
                      "x".join(map(str, cfg.tubelet)), f"{cfg.img_size}x{cfg.img_size}", cfg.interpolation,
                      f"{cfg.crop_pct:g}", f"{params / 1e6:.1f}M")
    ui.result(table)
    ui.emit({c.name: {**c.to_dict(), "parameters": n} for c, n in rows})

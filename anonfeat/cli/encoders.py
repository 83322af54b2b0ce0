"""`anonfeat encoders`: the registry as a table."""

from __future__ import annotations

from rich.table import Table

from anonfeat.cli.app import app
from anonfeat.cli.options import command
from anonfeat.cli.output import Output


@command(app, "encoders")
def encoders_command(ui: Output = None) -> None:
    """List the registered encoders with their dims, depth, clip length, input size and parameters."""
    from anonfeat.encoders import list_encoders, parameter_count

    rows = [(c, parameter_count(c)) for c in list_encoders()]
    table = Table(title="Registered encoders (plus timm:<model_name>, frame-wise)")
    for column in ("name", "dim", "depth", "heads", "clip", "tubelet", "input", "params"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for cfg, params in rows:
        table.add_row(cfg.name, str(cfg.embed_dim), str(cfg.depth), str(cfg.num_heads), str(cfg.clip_len),
                      "x".join(map(str, cfg.tubelet)), f"{cfg.img_size}x{cfg.img_size}", f"{params / 1e6:.1f}M")
    ui.result(table)
    ui.emit({c.name: {**c.to_dict(), "parameters": n} for c, n in rows})

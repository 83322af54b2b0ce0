"""Flags of `anonfeat audit`, torch-free so the CLI can build its flags from them without importing
torch (see anonfeat.options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Sequence

from anonfeat.errors import AnonfeatError
from anonfeat.options import (ATTACKERS, attributes_option, check_declared, device_option, option,
                              split_seed_option)



@dataclass
class AuditOptions:
    """Settings of an audit; the defaults follow the papers' attacker protocol."""

    attacker: str = option("mlp", "Attacker: mlp (Linear-ReLU-Linear, the papers') or linear.", choices=ATTACKERS)
    seeds: int = option(3, "Runs with seeds 0..N-1; mean and std reported.", min=1)
    epochs: int = option(100, "Training epochs of attackers and probes (the epoch kept is chosen on validation "
                              "data).", min=1)
    tasks: tuple[str, ...] = option(("action",), "Utility column (repeatable).", "--task", cli_type=List[str],
                                    parse=tuple)
    attributes: Sequence[str] | None = attributes_option()
    bias_attribute: str | None = option(None, "Report top-1 of the first task per value of this column and the gap "
                                              "between groups.")
    device: Any = device_option()  # a name, or a torch.device from Python
    lr: float = 1e-3
    batch_size: int = 512
    val_fraction: float = 0.2
    seed: int = 0
    split_seed: int = split_seed_option()
    allow_seen: bool = option(False, "Audit stores whose anonymizer trained on test videos (refused by default: "
                                     "their figures flatter them).")

    def validate(self) -> None:
        check_declared(self)
        if not 0.0 < self.val_fraction < 1.0:
            raise AnonfeatError(f"validation fraction {self.val_fraction} must lie strictly between 0 and 1")
        if not self.tasks:
            raise AnonfeatError("give at least one utility task (--task COLUMN)")

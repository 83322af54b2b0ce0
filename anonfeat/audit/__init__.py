"""Privacy and utility audit of feature stores.

>>> report = audit_stores(["sanitized.h5"], "labels.csv", baseline="raw.h5", seeds=3)
>>> report_json(report)["stores"]["sanitized.h5"]["privacy"]["cmap"]

Two fresh attackers per store predict the private attributes (static clips, the papers' protocol, and
ordinary clips, which can leak where static clips do not); the headline cMAP is the worse of the two.
A linear probe measures utility on the same splits and seeds.
"""

from anonfeat.audit.report import audit_figure, plot, render_table, report_json, write_json
from anonfeat.probes.attackers import ATTACKERS, build_attacker, build_probe
from anonfeat.audit.runner import (AttackResult, AuditOptions, AuditReport, StoreResult, audit_store,
                                   audit_stores)

__all__ = [
    "ATTACKERS", "AttackResult", "AuditOptions", "AuditReport", "StoreResult", "audit_store", "audit_stores",
    "audit_figure", "build_attacker", "build_probe", "plot", "render_table", "report_json", "write_json",
]

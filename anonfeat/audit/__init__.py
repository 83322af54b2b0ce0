"""Privacy and utility audit of feature stores.

>>> report = audit_stores(["sanitized.h5"], "labels.csv", baseline="raw.h5", seeds=3)
>>> report_json(report)["stores"]["sanitized.h5"]["privacy"]["cmap"]

Two fresh attackers per store predict the private attributes (static clips, the papers' protocol, and
ordinary clips, which can leak where static clips do not); the headline cMAP is the worse of the two.
A linear probe measures utility on the same splits and seeds.
"""

from __future__ import annotations

from anonfeat._lazy import lazy_getattr

# Loaded on first use, so the CLI reads AuditOptions (anonfeat.audit.options) without importing torch.
_LAZY = {
    "ATTACKERS": "anonfeat.audit.options", "AuditOptions": "anonfeat.audit.options",
    "build_attacker": "anonfeat.probes.attackers", "build_probe": "anonfeat.probes.attackers",
    "audit_figure": "anonfeat.audit.report", "plot": "anonfeat.audit.report",
    "render_table": "anonfeat.audit.report",
    "report_json": "anonfeat.audit.report", "write_json": "anonfeat.audit.report",
    "AttackResult": "anonfeat.audit.runner", "AuditReport": "anonfeat.audit.runner",
    "StoreResult": "anonfeat.audit.runner", "audit_store": "anonfeat.audit.runner",
    "audit_stores": "anonfeat.audit.runner",
}
__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)

"""A clustering as people and tools read it: a static HTML report, and table columns.

:func:`write_cluster_report` writes the report (``index.html``, thumbnails, matplotlib plots)
from plain arrays; :func:`assign_batch` and :func:`assign_projections` give every head's
assignments (:class:`ClusterAssignments`) that it takes (``ClusterAssignments.write_report``
passes them all).
"""

from secu_plugin.cluster_report.assignments import (
    ClusterAssignments,
    assign_batch,
    assign_projections,
)
from secu_plugin.cluster_report.report import write_cluster_report

__all__ = ["ClusterAssignments", "assign_batch", "assign_projections", "write_cluster_report"]

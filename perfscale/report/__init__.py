"""HTML run reports with plots."""

from perfscale.report.html import build_report

__all__ = ["build_report"]

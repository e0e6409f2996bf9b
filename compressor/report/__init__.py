"""Run reports: report.json, report.md and the final rich summary."""

from compressor.report.run_report import before_after, print_summary, write_run_report

__all__ = ["before_after", "print_summary", "write_run_report"]

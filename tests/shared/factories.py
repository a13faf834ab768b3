"""A report that exercises every model of the contract (it lives in shared.samples, where
the benchmarks find it too)."""

from shared.samples import full_report, full_report_dict

__all__ = ["full_report", "full_report_dict"]

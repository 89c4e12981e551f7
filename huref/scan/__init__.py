"""Batch scans of model zoos against the registry of known bases."""

from huref.scan.runner import ScanConfig, ScanReport, run_scan, scan_settings

__all__ = ["ScanConfig", "ScanReport", "run_scan", "scan_settings"]

"""Audit reports: evidence gathering, the JSON record and the self-contained HTML page."""

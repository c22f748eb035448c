"""Comparison of runs and the study report (HTML, JSON, Markdown)."""

"""Multiruns: the summary of a sweep's jobs (CSV/JSON/HTML), built by a hydra callback or tools/summarize.py."""

"""Benchmarks (``make bench``): each module has ``run(report: list[str])`` appending Markdown."""

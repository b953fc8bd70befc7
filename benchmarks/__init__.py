"""Benchmark suites behind ``zoo bench TASK``: ``benchmarks/<task>.py`` exposes ``VERB`` (found by the task's
name); speed as ratios measured side by side in one run."""

import sys


def progress(message: str) -> None:
    """What the bench is doing now, on stderr (stdout stays the report)."""
    print(f"zoo bench: {message}", file=sys.stderr, flush=True)

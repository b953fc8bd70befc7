"""Benchmark suites behind ``zoo bench TASK``: speed as ratios measured side by side in one run."""

from . import detection  # noqa: F401  (registers `zoo bench detection`)
from . import language  # noqa: F401,E402  (registers `zoo bench language`)

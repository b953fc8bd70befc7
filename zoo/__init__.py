"""The spiking model zoo: ``zoo.load("spikeyolo-coco")``."""

from .errors import OfflineError, WeightsError, ZooError  # noqa: F401  (first: neurons import it)

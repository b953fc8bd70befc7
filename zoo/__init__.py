"""The spiking model zoo: ``zoo.load("spikeyolo-coco")``."""

from .errors import OfflineError, WeightsError, ZooError  # noqa: F401  (first: neurons import it)
from .api import load  # noqa: E402
from .hub import cache_dir  # noqa: E402
from .profile import Profile, profile  # noqa: E402
from .registry import Metric, ModelCard, info, list_models, register  # noqa: E402

__all__ = ["load", "list_models", "info", "register", "profile", "Profile", "ModelCard", "Metric", "cache_dir",
           "ZooError", "WeightsError", "OfflineError"]

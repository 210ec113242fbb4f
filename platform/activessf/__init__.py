"""ActiveSSF on Ray: active-learning-guided self-supervised megakaryocyte classification.

The library behind the ``activessf`` command. Algorithms live in pure modules
(no Ray, no MLflow); Ray and MLflow wrappers are thin and separate.
"""

from .config import Config, ConfigError, load_config, save_config
from .subtypes import SUBTYPES

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "SUBTYPES", "load_config", "save_config", "__version__"]

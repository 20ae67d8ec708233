"""hf_distill: universal image embedders by multi-teacher distillation (UDON, UNIC, MLFD).

Importing the package registers its configurations and models with the transformers Auto classes.
"""

from hf_distill import models  # noqa: F401  (registers the Auto classes)

__version__ = "0.1.0"

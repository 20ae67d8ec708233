"""hf_distill: universal image embedders by multi-teacher distillation (UDON, UNIC, MLFD).

Importing the package registers the three methods (``hf_distill.registry``) and their configurations and models
with the transformers Auto classes.
"""

from hf_distill import (
    models,  # noqa: F401  (registers the embedder's Auto classes)
    trainers,  # noqa: F401  (registers UDON, UNIC and MLFD)
)

__version__ = "0.1.0"

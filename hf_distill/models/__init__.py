"""Model families: the exported embedder and one folder per method. Each sub-package registers its
configuration and model classes with the transformers Auto classes on import."""

from hf_distill.models import embedder, mlfd, udon, unic  # noqa: F401

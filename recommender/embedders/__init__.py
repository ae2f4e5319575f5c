"""Embedders turn texts into unit-length float32 vectors.

* ``base``: the ``Embedder`` protocol and ``EmbedderSpec``, what an entry
  point resolves once and passes down (the model, its backend and
  precision, the passage layout: the embedding key).
* ``choice``: ``resolve`` (which backend, at once), ``measure`` and the
  measurements kept per machine.
* ``load``: ``load_embedder(spec)``, the one factory, and ``LazyEmbedder``.
* ``torch_backend``, ``onnx_backend``, ``openvino_backend``: the runtimes and
  their exports; ``query``: search queries on the ONNX export.
* ``machine``: the CPU's flags, library versions, the cache folder.

torch, onnxruntime and OpenVINO are imported only when a model is loaded.
"""

from recommender.embedders.base import Choice, Embedder, EmbedderSpec, model_id_for
from recommender.embedders.choice import candidates, resolve
from recommender.embedders.load import LazyEmbedder, load_embedder


def embedding_key(spec: EmbedderSpec) -> str:
    """The cache key of the vectors ``spec`` makes (``EmbedderSpec.key``)."""
    return spec.key


__all__ = ["Choice", "Embedder", "EmbedderSpec", "LazyEmbedder", "candidates", "embedding_key", "load_embedder",
           "model_id_for", "resolve"]

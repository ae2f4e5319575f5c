"""The HTTP service: ``create_app(settings)`` builds a FastAPI app whose
lifespan loads the index and the model. Nothing heavy happens at import."""

from recommender.api.app import create_app

__all__ = ["create_app"]

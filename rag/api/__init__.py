"""The HTTP service: JSON API, an OpenAI-compatible chat endpoint and the chat page.

``create_app(settings)`` builds the FastAPI app (``rag.api.app``); the routers are in
``rag.api.routes``, the request/response shapes in ``rag.api.schemas``, the loaded models
and document operations in ``rag.api.service``.
"""

from rag.api.app import create_app

__all__ = ["create_app"]

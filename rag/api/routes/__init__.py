"""One ``APIRouter`` per resource: questions, documents, health, the OpenAI-compatible API, pages."""

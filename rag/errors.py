"""Errors a user can fix. The CLI prints their message on one line and exits with 2;
the API turns them into 4xx answers. Anything else is a bug and keeps its traceback."""


class RagError(Exception):
    """Base of every user-facing error: the message names the problem and the fix."""


class IngestError(RagError):
    """A document or docs folder cannot be read."""


class IndexError_(RagError):
    """The index is missing, stale or was built with other settings."""


class EmbeddingError(RagError):
    """The configured embedding model cannot be loaded."""


class QuestionError(RagError):
    """The question is empty or otherwise unusable."""

"""Errors a user can fix. The CLI prints their message on one line and exits with 2;
the API turns them into 4xx answers. Anything else is a bug and keeps its traceback."""


class RagError(Exception):
    """Base of every user-facing error: the message names the problem and the fix."""


class IngestError(RagError):
    """A document or docs folder cannot be read."""


class IndexError_(RagError):
    """The index is missing, stale or was built with other settings."""


class StaleIndexError(IndexError_):
    """The live build was made with another model or other settings: rebuild it."""


class CorruptIndexError(IndexError_):
    """A file of the live build is unreadable or disagrees with the rest, and no older build is good."""


class StoreUnavailableError(IndexError_):
    """The store the index lives in (a Milvus server, a milvus-lite file) cannot be reached now.

    Not a bad build: the files and the collection may be fine once the server is back or the
    other process lets go of the file. The API answers 503, the CLI one line and exit 2.
    """


class EmbeddingError(RagError):
    """The configured embedding model cannot be loaded."""


class QuestionError(RagError):
    """The question is empty or otherwise unusable."""


class NotFoundError(RagError):
    """A named document, article or model does not exist."""


class ConflictError(RagError):
    """The operation contradicts the current state, e.g. removing the last document."""


class PayloadError(RagError):
    """An uploaded document cannot be used: no usable name, empty, not text."""


class PayloadTooLargeError(PayloadError):
    """An upload is larger than the configured limit (``RAG_MAX_UPLOAD_BYTES``)."""


class UnsupportedMediaError(PayloadError):
    """An upload is not a ``.txt``/``.md`` text file."""

"""Property-based tests of the whole HTTP API from its OpenAPI schema: no input makes it fail.

Every route is driven (``/ask``, ``/ask/stream``, ``/search``, ``/documents`` and its jobs,
``/feedback``, ``/healthz``, ``/readyz``, ``/examples``, ``/v1/*``): no 5xx, and every
response conforms to the schema (status documented, body shaped as documented). Uploads
and deletes carry the admin token, so they reach their handlers: they run against a server
of their own over a private copy of the seeds and index, so what they add or remove cannot
change what the other test modules see.

The schema comes from the app factory itself (generating it loads no model). (``schemathesis
.pytest.from_fixture`` would fetch it from the live server instead, but schemathesis 4.32's
lazy loader breaks on pytest 9.) ``max_examples`` keeps the file to a few minutes; a bigger
run by hand: ``rag serve`` on loopback, then ``schemathesis run http://127.0.0.1:8000/openapi.json``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import schemathesis
from conftest import API_ADMIN_TOKEN
from fake_llm import LoopbackServer
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance, unsupported_method

from rag.api import create_app
from rag.embedding import Embedder
from rag.settings import Settings

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())

ADMIN = {"Authorization": f"Bearer {API_ADMIN_TOKEN}"}

# Checks that do not apply to an operation, and why (everything else is checked there:
# no 5xx, documented statuses, content types and bodies):
# - valid-by-schema data may rightly be refused where the schema cannot say everything:
#   /v1/chat/completions needs a user message with a usable question and takes
#   stream_options only with stream; an upload must be a .txt/.md text file (415).
# - DELETE /documents answers 404, not 405, on purpose: clients turn DELETE /documents/.
#   into it (dot segments), and every id string must reach the handler (issue 13).
NOT_APPLICABLE = {
    "POST /v1/chat/completions": [positive_data_acceptance],
    "POST /documents": [positive_data_acceptance],
    "GET /documents": [unsupported_method],
}


@pytest.fixture(scope="module")
def own_server(
    api_settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real uvicorn server like ``live_server``, over a private copy of its docs and index."""
    root = tmp_path_factory.mktemp("schemathesis")
    shutil.copytree(api_settings.docs_dir, root / "docs")
    shutil.copytree(api_settings.index_dir, root / "index", ignore=shutil.ignore_patterns("*.lock"))
    own = api_settings.model_copy(update={"docs_dir": root / "docs", "index_dir": root / "index"})
    with LoopbackServer(create_app(own, embedder=embedder), settings=own, name="schemathesis") as server:
        yield server.url


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_makes_the_api_fail(case: schemathesis.Case, own_server: str) -> None:
    excluded = NOT_APPLICABLE.get(case.operation.label, [])
    case.call_and_validate(base_url=own_server, headers=ADMIN, timeout=120, excluded_checks=excluded)

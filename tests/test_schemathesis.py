"""Property-based tests of /ask and /search from the OpenAPI schema: no input makes the server fail.

The schema comes from the app factory itself (generating it loads no model); the cases are
sent to the live server. (``schemathesis.pytest.from_fixture`` would fetch it from the live
server instead, but schemathesis 4.32's lazy loader breaks on pytest 9.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from rag.api import create_app
from rag.settings import Settings

schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi()).include(
    path_regex=r"^/(ask|search)$"
)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_ask_and_search_never_fail(case: schemathesis.Case, live_server: str) -> None:
    case.call_and_validate(base_url=live_server, timeout=120)

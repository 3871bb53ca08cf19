"""Feedback: the SQLite store itself, and POST/GET /feedback against the live server."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from rag.api import create_app
from rag.embedding import Embedder
from rag.feedback import (
    MAX_ANSWER_CHARS,
    MAX_CITATIONS,
    MAX_COMMENT_CHARS,
    MAX_QUESTION_CHARS,
    Feedback,
    FeedbackStore,
    feedback_path,
)
from rag.settings import Settings

ADMIN = {"Authorization": "Bearer test-admin-token"}  # conftest.API_ADMIN_TOKEN
PAGE_000 = "000_ed8d00c7a0348028.txt"


def entry(**kw: object) -> Feedback:
    fields: dict[str, object] = {
        "rating": "up",
        "question": "锦屏成立了什么联盟",
        "answer": "创新服务联盟 [1]",
    }
    return Feedback.model_validate({**fields, **kw})


# ---- the store --------------------------------------------------------------------------


def test_store_keeps_rows_across_reopening_and_exports_jsonl(tmp_path: Path) -> None:
    path = feedback_path(Settings(index_dir=tmp_path / "index"))
    assert path == tmp_path / "index" / "feedback.sqlite3"
    store = FeedbackStore(path)
    first = store.add(entry(citations=[f"{PAGE_000}#0"], conversation_id="c1", answer_mode="extractive"))
    second = store.add(entry(rating="down", comment="答案不完整，漏了“商会”"))
    assert second == first + 1
    store.close()

    reopened = FeedbackStore(path)
    assert reopened.count() == 2
    out = io.StringIO()
    assert reopened.export_jsonl(out) == 2
    reopened.close()
    lines = out.getvalue().splitlines()
    assert "商会" in lines[1]  # ensure_ascii=False: the export is readable Chinese
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["citations"] == [f"{PAGE_000}#0"]
    assert rows[0]["conversation_id"] == "c1" and rows[0]["answer_mode"] == "extractive"
    assert rows[1]["rating"] == "down" and rows[1]["comment"] == "答案不完整，漏了“商会”"
    assert rows[1]["citations"] == [] and rows[1]["conversation_id"] is None
    assert all(r["created_at"].endswith("Z") and r["created_at"][:2] == "20" for r in rows)


def test_store_is_safe_to_share_between_threads(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    errors: list[BaseException] = []

    def add_many(worker: int) -> None:
        try:
            for i in range(25):
                store.add(entry(question=f"问题 {worker}-{i}"))
                store.count()
        except Exception as exc:  # noqa: BLE001 - any error in a worker is the failure asserted below
            errors.append(exc)

    threads = [threading.Thread(target=add_many, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 200
    out = io.StringIO()
    store.export_jsonl(out)
    ids = [json.loads(line)["id"] for line in out.getvalue().splitlines()]
    assert sorted(ids) == ids and len(set(ids)) == 200
    store.close()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rating", "meh"),
        ("question", ""),
        ("question", "问" * (MAX_QUESTION_CHARS + 1)),
        ("answer", "答" * (MAX_ANSWER_CHARS + 1)),
        ("citations", [f"a.txt#{i}" for i in range(MAX_CITATIONS + 1)]),
        ("comment", "评" * (MAX_COMMENT_CHARS + 1)),
    ],
)
def test_feedback_fields_are_bounded(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        entry(**{field: value})
    assert [e["loc"][0] for e in info.value.errors()] == [field]


def test_feedback_at_the_limits_is_accepted() -> None:
    ok = entry(
        question="问" * MAX_QUESTION_CHARS,
        answer="答" * MAX_ANSWER_CHARS,
        citations=[f"a.txt#{i}" for i in range(MAX_CITATIONS)],
        comment="评" * MAX_COMMENT_CHARS,
    )
    assert len(ok.citations) == MAX_CITATIONS


# ---- the HTTP routes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(live_server: str) -> httpx.Client:
    with httpx.Client(base_url=live_server, timeout=120) as c:
        yield c


def test_posted_feedback_is_exported_as_jsonl(client: httpx.Client, api_settings: Settings) -> None:
    answer = client.post("/ask", json={"question": "锦屏成立了什么联盟"}).json()
    body = {
        "rating": "up",
        "question": answer["question"],
        "answer": answer["answer"],
        "citations": [c["article_id"] for c in answer["citations"][:1]],
        "conversation_id": "conv-test-export",
        "comment": "准确",
        "answer_mode": answer["answer_mode"],
    }
    r = client.post("/feedback", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["rating"] == "up" and isinstance(created["id"], int)

    r = client.get("/feedback", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["content-disposition"] == "attachment; filename=feedback.jsonl"
    rows = [json.loads(line) for line in r.text.splitlines()]
    mine = next(row for row in rows if row["id"] == created["id"])
    assert {k: mine[k] for k in body} == body
    assert mine["citations"] == [f"{PAGE_000}#0"]
    assert "锦屏" in r.text  # not \\u-escaped
    # The rows are in the SQLite file beside the index, outside the builds a rebuild replaces.
    store = FeedbackStore(feedback_path(api_settings))
    try:
        assert store.count() == len(rows)
    finally:
        store.close()


def test_feedback_export_needs_the_admin_token(client: httpx.Client) -> None:
    r = client.get("/feedback")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "RAG_ADMIN_TOKEN" in r.json()["detail"]
    assert client.get("/feedback", headers={"Authorization": "Bearer wrong"}).status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rating": "sideways", "question": "问题", "answer": "答"}, "rating"),
        ({"question": "问题", "answer": "答"}, "rating"),
        ({"rating": "up", "question": "问" * (MAX_QUESTION_CHARS + 1), "answer": "答"}, "question"),
        ({"rating": "up", "question": "问题", "answer": "答" * (MAX_ANSWER_CHARS + 1)}, "answer"),
        (
            {"rating": "up", "question": "问题", "answer": "答", "citations": ["x"] * (MAX_CITATIONS + 1)},
            "citations",
        ),
        ({"rating": "up", "question": "问题", "answer": "答", "comment": "评" * 2001}, "comment"),
    ],
)
def test_bad_feedback_is_a_422_naming_the_field(client: httpx.Client, body: dict, field: str) -> None:
    before = client.get("/feedback", headers=ADMIN).text.count("\n")
    r = client.post("/feedback", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(f"{field}:")
    assert client.get("/feedback", headers=ADMIN).text.count("\n") == before


def test_feedback_must_be_json(client: httpx.Client) -> None:
    r = client.post("/feedback", data={"rating": "up", "question": "问题", "answer": "答"})
    assert r.status_code == 415


def test_export_is_off_without_a_token(api_settings: Settings, embedder: Embedder) -> None:
    no_token = api_settings.model_copy(update={"admin_token": None})
    with TestClient(create_app(no_token, embedder=embedder)) as c:
        r = c.post("/feedback", json={"rating": "down", "question": "问题", "answer": "答"})
        assert r.status_code == 201  # rating needs no token
        r = c.get("/feedback", headers=ADMIN)
        assert r.status_code == 403
        assert "RAG_ADMIN_TOKEN" in r.json()["detail"] and "rag feedback-export" in r.json()["detail"]

"""Uploads and deletes as jobs, against real servers on loopback over their own docs copies.

Each server here has its own copy of seeds/ (never the shared ``live_server``'s), so the
folder can be emptied, filled by hand or left with a killed server's staging folders.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from fake_llm import LoopbackServer

from rag.api import create_app
from rag.api.service import MAX_STEM_BYTES, safe_filename
from rag.embedding import Embedder
from rag.index import build_index
from rag.settings import Settings

SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds"
TOKEN = "jobs-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
JOB_TIMEOUT = 300.0

LAKE_DOC = (
    "白鹭湖湿地观鸟站建成开放\n\n"
    "本报讯（通讯员 孙晓岚）白鹭湖湿地观鸟站近日建成开放，站内配备了十二台高倍望远镜，"
    "已记录到一百三十七种鸟类。观鸟站由湖滨街道和市野生动物保护协会共同建设。\n"
)
LAKE_QUERY = "白鹭湖湿地观鸟站记录到多少种鸟类"
HAND_TITLE = "青藤巷手工灯笼作坊"
HAND_DOC = (
    f"{HAND_TITLE}\n\n本报讯 青藤巷一家手工灯笼作坊每年制作灯笼约九千盏，作坊主人已经做了三十年灯笼。\n"
)


def _article(i: int) -> str:
    return (
        f"第{i}号新闻：南岭县第{i}届农民丰收节举行\n\n"
        f"本报讯（通讯员 李{i}）南岭县第{i}届农民丰收节日前在县城广场举行，来自全县的{i + 20}个村"
        f"带来了稻米、茶叶和水果等特产，现场还举办了插秧比赛和农具展览。县农业部门负责人介绍，"
        f"今年全县粮食总产量比去年增长百分之{i % 9 + 1}，特色农产品销售额再创新高。\n"
    )


BIG_DOC = "\n".join(_article(i) for i in range(60))
"""About 60 articles: a rebuild long enough for queries to arrive while it runs."""


def wait_job(client: httpx.Client, job: dict[str, Any], timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    """Poll ``GET /documents/jobs/{id}`` until the job is done or failed; returns its last state."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/documents/jobs/{job['id']}")
        assert r.status_code == 200, r.text
        state = r.json()
        if state["status"] in ("done", "failed"):
            return state
        assert time.monotonic() < deadline, f"job still {state['status']} after {timeout} s: {state}"
        time.sleep(0.1)


def upload(client: httpx.Client, name: str, text: str | bytes) -> httpx.Response:
    data = text.encode() if isinstance(text, str) else text
    return client.post("/documents", files={"file": (name, data, "text/plain")}, headers=ADMIN)


def accepted(r: httpx.Response) -> dict[str, Any]:
    """The job of a 202, with its Location checked."""
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert r.headers["location"] == f"/documents/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "done")
    return job


def raw_request(base: str, method: str, path: str) -> tuple[int, str]:
    """Send ``path`` exactly as written (httpx would drop dot segments): status and body."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    try:
        conn.request(method, path, headers=ADMIN)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def own_corpus(settings: Settings, embedder: Embedder, root: Path) -> Settings:
    """Settings over a fresh copy of seeds/ in ``root/docs``, indexed into ``root/index``."""
    docs = root / "docs"
    shutil.copytree(SEEDS_DIR, docs)
    own = settings.model_copy(update={"docs_dir": docs, "index_dir": root / "index", "admin_token": TOKEN})
    build_index(own, embedder)
    return own


@pytest.fixture(scope="module")
def jobs_settings(
    settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    own = own_corpus(settings, embedder, tmp_path_factory.mktemp("jobs"))
    # What a server killed mid-upload leaves: a staging folder with the parked file.
    leftover = own.docs_dir / ".upload-x"
    leftover.mkdir()
    (leftover / "半截.txt").write_text(LAKE_DOC, encoding="utf-8")
    (own.docs_dir / ".delete-999999999-abc").mkdir()  # a pid that is not running
    return own


@pytest.fixture(scope="module")
def server(jobs_settings: Settings, embedder: Embedder) -> Iterator[str]:
    with LoopbackServer(create_app(jobs_settings, embedder=embedder), name="jobs") as s:
        yield s.url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def sources(client: httpx.Client) -> set[str]:
    return {f["source"] for f in client.get("/documents").json()["files"]}


def test_leftover_staging_folders_are_removed_at_start(client: httpx.Client, jobs_settings: Settings) -> None:
    hidden = [p.name for p in jobs_settings.docs_dir.iterdir() if p.name.startswith(".")]
    assert hidden == []
    listing = client.get("/documents").json()
    assert "半截.txt" not in sources(client) and listing["unindexed"] == []


def test_upload_is_a_job_then_searchable_then_delete_is_a_job(
    client: httpx.Client, jobs_settings: Settings
) -> None:
    started = time.perf_counter()
    r = upload(client, "白鹭湖.txt", LAKE_DOC)
    answered = time.perf_counter() - started
    job = accepted(r)
    assert answered < 10, f"the 202 took {answered:.1f} s"
    assert job["kind"] == "upload" and job["source"] == "白鹭湖.txt" and job["renamed"] is False
    done = wait_job(client, job)
    assert done["status"] == "done", done
    assert done["upload"]["source"] == "白鹭湖.txt" and done["upload"]["replaced"] is False
    assert [a["id"] for a in done["upload"]["articles"]] == ["白鹭湖.txt#0"]
    assert done["upload"]["counts"]["documents"] == 6
    assert set(done["timings_ms"]) == {"queued", "run"} and done["timings_ms"]["run"] > 0
    assert done["started_at"] and done["finished_at"] and done["error"] is None
    hits = client.get("/search", params={"q": LAKE_QUERY}).json()["hits"]
    assert hits[0]["source"] == "白鹭湖.txt"
    answer = client.post("/ask", json={"question": LAKE_QUERY}).json()
    assert answer["citations"][0]["source"] == "白鹭湖.txt"

    r = client.delete(f"/documents/{quote('白鹭湖.txt#0', safe='')}", headers=ADMIN)
    job = accepted(r)
    assert job["kind"] == "delete" and job["source"] == "白鹭湖.txt"
    gone = wait_job(client, job)
    assert gone["status"] == "done", gone
    assert gone["delete"] == {
        "deleted": "白鹭湖.txt",
        "articles": ["白鹭湖.txt#0"],
        "counts": gone["delete"]["counts"],
    }
    assert gone["delete"]["counts"]["documents"] == 5
    assert not (jobs_settings.docs_dir / "白鹭湖.txt").exists()
    assert all(
        h["source"] != "白鹭湖.txt" for h in client.get("/search", params={"q": LAKE_QUERY}).json()["hits"]
    )
    assert client.delete("/documents/白鹭湖.txt", headers=ADMIN).status_code == 404


def test_queries_answer_while_an_upload_job_runs(client: httpx.Client) -> None:
    before = client.get("/documents").json()["counts"]
    job = accepted(upload(client, "丰收节合集.txt", BIG_DOC))
    questions = [
        "锦屏成立了什么联盟",
        "恒锋工具位于哪里",
        "岳林街道辖区有多少家高新技术企业",
        "芯·潮夜市大约有多少个摊位",
    ]

    def ask(i: int) -> tuple[int, float]:
        with httpx.Client(base_url=str(client.base_url), timeout=120) as c:
            r = c.post("/ask", json={"question": questions[i % len(questions)]})
            return r.status_code, time.time()

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(ask, range(20)))
        done = wait_job(client, job)
        assert done["status"] == "done", done
        assert [status for status, _ in results] == [200] * 20
        finished = datetime.fromisoformat(done["finished_at"]).timestamp()
        early = [t for _, t in results if t < finished]
        assert early, "no query was answered while the job ran"
        assert done["upload"]["counts"]["articles"] == before["articles"] + 60
    finally:
        wait_job(client, accepted(client.delete("/documents/丰收节合集.txt", headers=ADMIN)))


def test_unknown_job_is_404(client: httpx.Client) -> None:
    for job_id in ["0" * 32, "f" * 32, "nope", "../x", "%2e%2e"]:
        r = client.get(f"/documents/jobs/{job_id}")
        assert r.status_code == 404, (job_id, r.text)
        assert "message" in r.json()


def test_a_name_longer_than_a_form_header_is_a_clean_400(client: httpx.Client) -> None:
    # 5,000 Chinese characters are 15,000 bytes: more than python-multipart reads as a part header.
    r = upload(client, "长" * 5000 + ".txt", LAKE_DOC)
    assert r.status_code == 400, r.text
    assert "shorten the file name" in r.json()["message"]
    assert "4224 bytes" in r.json()["message"]
    assert client.get("/healthz").status_code == 200  # and the connection was answered, not dropped


@pytest.mark.parametrize("length", [84, 200, 1300])
def test_long_chinese_names_are_shortened_to_fit(
    client: httpx.Client, jobs_settings: Settings, length: int
) -> None:
    name = "长" * (length - 1) + "名" + ".txt"
    job = accepted(upload(client, name, LAKE_DOC.replace("白鹭湖", f"长名湖{length}")))
    saved = job["source"]
    assert saved == safe_filename(name) and saved.endswith(".txt")
    assert len(saved.encode()) <= MAX_STEM_BYTES + len(".txt") < 255
    assert job["renamed"] is (len(name[:-4].encode()) > MAX_STEM_BYTES)
    try:
        done = wait_job(client, job)
        assert done["status"] == "done", done
        assert (jobs_settings.docs_dir / saved).is_file()
        assert saved in sources(client)
    finally:
        wait_job(client, accepted(client.delete(f"/documents/{quote(saved, safe='')}", headers=ADMIN)))


def test_two_long_names_with_one_start_stay_two_files() -> None:
    a, b = "长" * 100 + "甲.txt", "长" * 100 + "乙.txt"
    assert safe_filename(a) != safe_filename(b)
    assert safe_filename(a) == safe_filename(a)  # the same name replaces its own file


@pytest.mark.parametrize("name", [".txt", ".md", "   ", "...", " .txt", "..", "../.txt", ". . .md"])
def test_names_without_a_name_are_400(client: httpx.Client, jobs_settings: Settings, name: str) -> None:
    before = sorted(p.name for p in jobs_settings.docs_dir.iterdir())
    r = upload(client, name, LAKE_DOC)
    assert r.status_code == 400, r.text
    assert "file name" in r.json()["message"] or "no name" in r.json()["message"]
    assert sorted(p.name for p in jobs_settings.docs_dir.iterdir()) == before


@pytest.mark.parametrize(
    "path",
    [
        "/documents/.",
        "/documents/..",
        "/documents/%2e",
        "/documents/%2e%2e",
        "/documents/./.",
        "/documents/",
        "/documents/%E2%80%AE%E6%96%87.txt",  # right-to-left override
        "/documents/%EF%BC%8E%EF%BC%8E",  # fullwidth dots
        "/documents/%00",
        "/documents/%ff%fe",
        "/documents/jobs",
        "/documents/jobs/",
        "/documents/jobs/" + "0" * 32 + "/x",
    ],
)
def test_every_document_id_reaches_the_handler(server: str, jobs_settings: Settings, path: str) -> None:
    before = sorted(p.name for p in jobs_settings.docs_dir.iterdir())
    status, body = raw_request(server, "DELETE", path)
    assert status == 404, (path, status, body)
    status, body = raw_request(server, "GET", path)
    # GET /documents/ is the client's "/documents" with a slash: the handler's 404 as well.
    assert status == 404, (path, status, body)
    assert sorted(p.name for p in jobs_settings.docs_dir.iterdir()) == before


def test_httpx_normalised_dot_id_is_404_not_405(client: httpx.Client) -> None:
    # httpx (like browsers and curl) sends DELETE /documents/. as DELETE /documents.
    r = client.delete("/documents/.", headers=ADMIN)
    assert r.status_code == 404, r.text


def test_a_file_dropped_in_by_hand_is_listed_and_never_indexed_silently(
    client: httpx.Client, jobs_settings: Settings
) -> None:
    hand = jobs_settings.docs_dir / "手工放入.txt"
    hand.write_text(HAND_DOC, encoding="utf-8")
    try:
        listing = client.get("/documents").json()
        assert listing["unindexed"] == ["手工放入.txt"]
        assert "rag build" in listing["unindexed_hint"]
        assert "手工放入.txt" not in sources(client)
        done = wait_job(client, accepted(upload(client, "白鹭湖.txt", LAKE_DOC)))
        assert done["status"] == "done", done
        assert "手工放入.txt" not in sources(client)
        assert client.get("/documents").json()["unindexed"] == ["手工放入.txt"]
        hits = client.get("/search", params={"q": "青藤巷手工灯笼作坊每年制作多少盏灯笼"}).json()["hits"]
        assert all(h["source"] != "手工放入.txt" for h in hits)
        assert client.delete("/documents/手工放入.txt", headers=ADMIN).status_code == 404
        wait_job(client, accepted(client.delete("/documents/白鹭湖.txt", headers=ADMIN)))
    finally:
        hand.unlink(missing_ok=True)
    assert client.get("/documents").json()["unindexed"] == []


# ---- a server of its own: its docs folder is emptied or recreated under it -----------


@pytest.mark.parametrize("how", ["emptied", "recreated"])
def test_a_vanished_docs_folder_fails_the_job_and_keeps_the_index(
    settings: Settings, embedder: Embedder, tmp_path: Path, how: str
) -> None:
    own = own_corpus(settings, embedder, tmp_path)
    with (
        LoopbackServer(create_app(own, embedder=embedder), name="vanish") as s,
        httpx.Client(base_url=s.url, timeout=120) as c,
    ):
        before = c.get("/documents").json()
        assert before["counts"]["documents"] == 5
        if how == "emptied":
            for p in own.docs_dir.iterdir():
                p.unlink()
        else:
            shutil.rmtree(own.docs_dir)
            own.docs_dir.mkdir()
        job = accepted(upload(c, "白鹭湖.txt", LAKE_DOC))
        failed = wait_job(c, job)
        assert failed["status"] == "failed", failed
        assert failed["error_status"] == 409
        assert failed["error"].startswith(f"5 indexed documents are missing from {own.docs_dir}")
        assert "restore them or run rag build" in failed["error"]
        after = c.get("/documents").json()
        assert after["counts"] == before["counts"] and after["files"] == before["files"]
        assert not (own.docs_dir / "白鹭湖.txt").exists()
        assert [p.name for p in own.docs_dir.iterdir()] == []  # the staged upload went too
        hits = c.get("/search", params={"q": "锦屏成立了什么联盟"}).json()["hits"]
        assert hits and hits[0]["source"] in {f["source"] for f in before["files"]}
        # A delete is refused the same way, and the index stays.
        job = accepted(c.delete(f"/documents/{before['files'][0]['source']}", headers=ADMIN))
        failed = wait_job(c, job)
        assert failed["status"] == "failed" and failed["error_status"] == 409, failed
        assert "4 indexed documents are missing" in failed["error"]
        assert c.get("/documents").json()["counts"] == before["counts"]


def test_unindexed_files_are_warned_about_at_start(
    settings: Settings, embedder: Embedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = own_corpus(settings, embedder, tmp_path)
    (own.docs_dir / "手工放入.txt").write_text(HAND_DOC, encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="rag.api.service")
    with (
        LoopbackServer(create_app(own, embedder=embedder), name="unindexed") as s,
        httpx.Client(base_url=s.url, timeout=120) as c,
    ):
        assert c.get("/documents").json()["unindexed"] == ["手工放入.txt"]
    warned = [r.getMessage() for r in caplog.records if r.name == "rag.api.service"]
    assert any("手工放入.txt" in m and "rag build" in m for m in warned), warned

"""A hosted dashboard through gradio_client, two sessions at a time: zoo roots, per-session runs, downloads and
cancel, job ownership and limits, uploads stored once, the optional login."""
import json
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from dashboard_app import SLOW, SLOW_METHOD, running_app, zoo_dir  # noqa: F401 (module fixture)
from dashboard.ui import NO_SESSION
from merging.registry import METHODS


@pytest.fixture(scope="module")
def app(zoo_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(METHODS, SLOW, SLOW_METHOD)
        with running_app(zoo_dir, tmp_path_factory.mktemp("data"), jobs_per_session=2) as (url, demo):
            yield url, demo


def _client(app, **kwargs):
    return Client(app[0], verbose=False, **kwargs)


def _run_id(out) -> int:
    return int(out[0].split("Run #")[1].split(":")[0])


@pytest.mark.parametrize("path", ["/etc", "/no/such", "/etc/shadow", "../../../etc/passwd", "/proc/self/cwd"])
def test_the_path_box_opens_nothing_outside_the_zoo_roots(app, path):
    with pytest.raises(AppError) as caught:
        _client(app).predict("path", path, [], api_name="/load_zoo")
    message = str(caught.value)
    assert message.startswith(f"{path!r} is not inside the zoo roots (")
    for secret in ("/home", "/root", str(Path.home()), "Permission", "shadow:"):
        assert secret not in message.replace(repr(path), "")


def test_home_is_not_expanded(app):
    with pytest.raises(AppError, match=r"^no zoo at 'zoos/~/\.aws': give a zoo folder"):
        _client(app).predict("path", "~/.aws", [], api_name="/load_zoo")


def test_outside_paths_cannot_be_told_apart(app):
    messages = []
    for path in ("/etc", "/no/such/folder"):
        with pytest.raises(AppError) as caught:
            _client(app).predict("path", path, [], api_name="/load_zoo")
        messages.append(str(caught.value).replace(repr(path), "PATH"))
    assert messages[0] == messages[1]


def test_a_manifest_in_a_root_cannot_reference_files_outside(app, tmp_path):
    zoos = app[1].dashboard.service.settings.data_dir / "zoos"
    evil = zoos / "evil"
    evil.mkdir()
    (evil / "zoo.json").write_text(json.dumps({"architecture": "ViT-B-32", "pretrained": "/etc/hostname",
                                               "tasks": [{"name": "a", "finetuned": "../../../../etc/hostname"}]}))
    with pytest.raises(AppError) as caught:
        _client(app).predict("path", "zoos/evil", [], api_name="/load_zoo")
    message = str(caught.value)
    assert message.startswith("zoos/evil/zoo.json: pretrained: the path is not inside the zoo roots")
    assert "/etc" not in message and str(zoos) not in message


def test_a_visitor_sees_downloads_and_cancels_only_their_own_runs(app):
    mine, theirs = _client(app), _client(app)
    out = mine.predict("ties", json.dumps({"k": 30}), [], api_name="/merge")
    run = _run_id(out)
    # their history, compare, downloads and results do not know my run
    runs = theirs.predict(api_name="/history")[0]
    assert run not in [row[0] for row in runs["data"]]
    assert run in [row[0] for row in mine.predict(api_name="/history")[0]["data"]]
    with pytest.raises(AppError, match=f"run #{run} is not in the history"):
        theirs.predict(str(run), "open_clip", "", api_name="/download")
    with pytest.raises(AppError, match=f"run #{run} is not in the history"):
        theirs.predict([str(run), str(run)], api_name="/compare")
    results = json.loads(Path(theirs.predict("json", api_name="/download_results")).read_text())
    assert run not in [r["id"] for r in results]
    mine_results = Path(mine.predict("json", api_name="/download_results"))
    text = mine_results.read_text()
    assert run in [r["id"] for r in json.loads(text)]
    for secret in (mine.session_hash, theirs.session_hash, "sessions/", str(app[1].dashboard.service.data_dir)):
        assert secret not in text
    # my download: an unguessable folder of Gradio's cache, nothing of the data folder, no session hash in it
    path = Path(mine.predict(str(run), "open_clip", "", api_name="/download"))
    assert path.stat().st_size > 0
    served = app[1].dashboard.downloads
    assert mine.session_hash not in str(path)
    # the data folder (uploads, session folders, the history) is not served, whatever the path
    data = app[1].dashboard.service.data_dir
    session_dir = app[1].dashboard.service.session_dir(f"session:{mine.session_hash}")
    (session_dir / "probe.txt").write_text("private")
    for target in (session_dir / "probe.txt", data / "history.sqlite", data / "secret.key"):
        reply = httpx.get(f"{app[0]}gradio_api/file={target}")
        assert reply.status_code == 403, target
    listing = httpx.get(f"{app[0]}gradio_api/file={served}")
    assert listing.status_code == 403  # folders are never listed
    assert theirs.predict(api_name="/cancel") == "Nothing to cancel."
    assert mine.session_hash not in session_dir.name


def test_non_numeric_run_ids_give_a_clean_message(app):
    client = _client(app)
    with pytest.raises(AppError, match=r"^runs to compare: a run number such as 12 is expected, got 'abc'$"):
        client.predict(["abc", "1"], api_name="/compare")
    with pytest.raises(AppError, match=r"^run: a run number such as 12 is expected, got '1; DROP'$"):
        client.predict("1; DROP", "open_clip", "", api_name="/download")


def test_a_rest_call_without_a_session_is_refused_and_starts_nothing(app):
    before = len(app[1].dashboard.jobs.active())
    event = httpx.post(f"{app[0]}gradio_api/call/merge", json={"data": [SLOW, json.dumps({"seconds": 60}), [], ""]})
    event.raise_for_status()
    stream = httpx.get(f"{app[0]}gradio_api/call/merge/{event.json()['event_id']}", timeout=30).text
    assert "event: error" in stream and "needs a session" in stream
    assert NO_SESSION.split(":")[0] in stream
    assert len(app[1].dashboard.jobs.active()) == before
    # with a session_hash the call has an owner (who can cancel it with that hash) and runs
    event = httpx.post(f"{app[0]}gradio_api/call/merge",
                       json={"data": ["task_arithmetic", "{}", [], ""], "session_hash": "rest-caller-1"})
    stream = httpx.get(f"{app[0]}gradio_api/call/merge/{event.json()['event_id']}", timeout=60).text
    assert "event: complete" in stream and "done." in stream


def _wait_jobs(demo, owner, n, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(demo.dashboard.jobs.active(owner)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{owner} never had {n} jobs")


def test_a_session_may_have_two_jobs_and_cancels_them_all(app):
    client, other = _client(app), _client(app)
    who = f"session:{client.session_hash}"
    pending = [client.submit(SLOW, json.dumps({"seconds": 60}), [], api_name="/merge") for _ in range(2)]
    _wait_jobs(app[1], who, 2)
    with pytest.raises(AppError, match="you already have 2 jobs running or queued"):
        client.predict(SLOW, json.dumps({"seconds": 60}), [], api_name="/merge")
    assert other.predict(api_name="/cancel") == "Nothing to cancel."
    assert client.predict(api_name="/cancel") == "Cancelling 2 job(s)…"
    for job in pending:
        assert "Cancelled" in job.result(timeout=30)[-1]
    assert not app[1].dashboard.jobs.active(who)


def test_an_upload_is_stored_once_in_the_sessions_private_folder(app, zoo_dir):
    client = _client(app)
    files = [zoo_dir / "pretrained.safetensors", zoo_dir / "finetuned" / "task1.safetensors"]
    client.predict("demo", "", [], api_name="/load_zoo")  # the upload takes its architecture from this zoo
    summary = client.predict("upload", "", [handle_file(f) for f in files], api_name="/load_zoo")[0]
    assert "1 tasks" in summary and str(app[1].dashboard.service.data_dir) not in summary
    cache, data = Path(app[1].GRADIO_CACHE), app[1].dashboard.service.data_dir
    for original in files:
        body = original.read_bytes()
        copies = [p for root in (cache, data) for p in root.rglob(original.name) if p.read_bytes() == body]
        assert len(copies) == 1, copies
        assert data / "sessions" in copies[0].parents
    # another session cannot merge it (its zoo id is not theirs)
    service = app[1].dashboard.service
    upload = next(e for e in service._zoos.values() if e.owner == f"session:{client.session_hash}")
    with pytest.raises(ValueError, match="load a zoo first"):
        service.merge(upload.id, "ties", {}, owner="session:someone-else")


def test_with_a_login_runs_belong_to_the_user(zoo_dir, tmp_path):
    with running_app(zoo_dir, tmp_path / "data", auth=[("ann", "pw1"), ("bob", "pw2")]) as (url, demo):
        with pytest.raises(Exception):
            Client(url, verbose=False)  # no login, no app
        ann, ann_again, bob = (Client(url, verbose=False, auth=a) for a in (("ann", "pw1"), ("ann", "pw1"),
                                                                            ("bob", "pw2")))
        run = _run_id(ann.predict("task_arithmetic", "{}", [], api_name="/merge"))
        assert demo.dashboard.service.history.get(run).owner == "user:ann"
        assert run in [row[0] for row in ann_again.predict(api_name="/history")[0]["data"]]  # another tab
        assert run not in [row[0] for row in bob.predict(api_name="/history")[0]["data"]]


def test_uploads_nobody_used_are_removed_from_the_temp_folder(zoo_dir, tmp_path):
    with running_app(zoo_dir, tmp_path / "data", clean=(1, 2)) as (url, demo):
        reply = httpx.post(f"{url}gradio_api/upload", files={"files": ("stray.safetensors", b"x" * 1000)})
        (stored,) = reply.json()
        assert Path(stored).is_file() and Path(demo.GRADIO_CACHE) in Path(stored).parents
        deadline = time.time() + 20
        while Path(stored).exists() and time.time() < deadline:
            time.sleep(0.25)
        assert not Path(stored).exists()


def test_the_app_removes_temporary_files_of_killed_writes_at_start(tmp_path):
    import os
    from dashboard.service import Settings
    from dashboard.ui import create_app
    exports = tmp_path / "data" / "sessions" / ("0" * 32) / "exports"
    exports.mkdir(parents=True)
    stale = exports / ".run3-ties.safetensors.999999-abcdefgh.tmp"  # a writer (pid 999999) that is gone
    stale.write_bytes(b"half")
    kept = exports / "run3-ties.safetensors"
    kept.write_bytes(b"done")
    demo = create_app(Settings(tmp_path / "data", device="cpu"), None, preload=False)
    demo.dashboard.jobs.close()
    assert not stale.exists() and kept.read_bytes() == b"done"
    assert os.path.isdir(exports)

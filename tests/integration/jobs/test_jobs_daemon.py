"""Jobs in the daemon's life: a reload keeps the in-memory queue and applies new pool
settings; SIGTERM lets a running job finish (and exits 0); the metrics show the jobs."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest

from tests.support.jobs import request, submit
from tests.support.procs import free_port, start_lbd, wait_for

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
watch: {{enabled: false}}
log: {{access: false}}
jobs: {{result_ttl: {ttl}, visibility_timeout: 2s, webhook: {{secret: "0123456789abcdef0123"}}}}
pools:
  work:
    match: {{path_prefix: /work}}
    jobs: {{concurrency: {concurrency}, rate: {rate}}}
    backends: [{{url: "{recorder}"}}]
"""


@pytest.fixture
def recorder():
    from tests.support.receivers import Recorder

    server = Recorder()
    yield server
    server.stop()


def state(port: int, job_id: str) -> dict:
    status, _, view = request("GET", f"http://127.0.0.1:{port}/v1/jobs/{job_id}")
    assert status == 200, view
    return view


@pytest.mark.timeout(90)
def test_a_reload_keeps_the_memory_queue_and_applies_new_pool_settings(tmp_path, recorder):
    port, admin = free_port(), free_port()
    values = {"port": port, "admin": admin, "recorder": recorder.url}
    proc = start_lbd(tmp_path, CONFIG.format(ttl="1h", concurrency=0, rate="null", **values), port)
    try:
        job_id = submit(port, "/work", b'{"token": "kept"}')
        time.sleep(0.5)
        assert state(port, job_id)["state"] == "queued"  # no runner slot on this pool yet
        (tmp_path / "lbd.yaml").write_text(CONFIG.format(ttl="2h", concurrency=2, rate="null", **values))
        proc.signal(signal.SIGHUP)
        wait_for(lambda: state(port, job_id)["state"] == "succeeded", timeout=20, what="the kept job ran")
        assert recorder.started["kept"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'lbd_jobs_submitted_total{pool="work"} 1.0' in metrics
        assert 'lbd_jobs_finished_total{pool="work",state="succeeded"} 1.0' in metrics
        assert 'lbd_jobs_queue_latency_seconds_count{pool="work"} 1.0' in metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/admin/config",
                                                          timeout=5) as response:
            shown = json.loads(response.read())
        assert shown["config"]["jobs"]["webhook"]["secret"] == "***"  # the effective config hides it
    finally:
        proc.stop()


@pytest.mark.timeout(90)
def test_sigterm_lets_a_running_job_finish(tmp_path, recorder):
    port = free_port()
    proc = start_lbd(tmp_path, CONFIG.format(port=port, admin=free_port(), recorder=recorder.url, ttl="1h",
                                             concurrency=2, rate="null"), port)
    job_id = submit(port, "/work", json.dumps({"token": "slow", "delay": 1.5}).encode())
    wait_for(lambda: recorder.started["slow"] == 1, timeout=20, what="the job running")
    proc.signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert recorder.completed["slow"] == 1  # it was let finish, not cut
    assert '"jobs: handed back' not in proc.output()
    proc.stop()


@pytest.mark.timeout(90)
def test_concurrency_and_rate_bound_a_pools_runs(tmp_path, recorder):
    port = free_port()
    proc = start_lbd(tmp_path, CONFIG.format(port=port, admin=free_port(), recorder=recorder.url, ttl="1h",
                                             concurrency=3, rate=20), port)
    try:
        ids = [submit(port, "/work", json.dumps({"token": f"c{i}", "delay": 0.3}).encode()) for i in range(12)]
        wait_for(lambda: all(state(port, job_id)["state"] == "succeeded" for job_id in ids), timeout=60,
                 what="every job done")
        assert recorder.most_at_once <= 3  # never more runs at once than the pool's concurrency
        starts = sorted(state(port, job_id)["started_at"] for job_id in ids)
        assert starts[-1] - starts[0] >= 11 / 20 - 0.05  # 12 starts at 20/s take at least 0.55 s
    finally:
        proc.stop()


@pytest.mark.timeout(90)
def test_a_redis_that_goes_away_refuses_submissions_and_nothing_else(tmp_path, recorder):
    from tests.support.redis_server import RedisServer

    redis = RedisServer(tmp_path).start()
    port = free_port()
    text = CONFIG.format(port=port, admin=free_port(), recorder=recorder.url, ttl="1h", concurrency=2, rate="null")
    text = text.replace("jobs: {result_ttl", f'jobs: {{store: "{redis.url}", operation_timeout: 300ms, result_ttl')
    proc = start_lbd(tmp_path, text, port)
    revived = None
    try:
        job_id = submit(port, "/work", b'{"token": "before"}')
        wait_for(lambda: state(port, job_id)["state"] == "succeeded", timeout=20, what="a job with Redis up")
        redis.kill()
        status, headers, body = request("POST", f"http://127.0.0.1:{port}/v1/jobs/work", b'{"token": "x"}')
        headers = {name.lower(): value for name, value in headers.items()}
        assert (status, body["code"], headers["retry-after"]) == (503, "jobs_unavailable", "5")
        status, _, body = request("POST", f"http://127.0.0.1:{port}/work", b'{"token": "sync"}')
        assert (status, body) == (200, {"token": "sync"})  # interactive traffic does not need Redis
        revived = RedisServer(tmp_path, port=redis.port).start()  # back (empty: this one keeps no data)
        wait_for(lambda: request("POST", f"http://127.0.0.1:{port}/v1/jobs/work", b'{"token": "after"}')[0] == 202,
                 timeout=20, what="submissions accepted again")
        wait_for(lambda: recorder.completed["after"] >= 1, timeout=20, what="the runner claiming again")
        assert proc.output().count("the store is unavailable; retrying") <= 1  # said once, not every second
    finally:
        proc.stop()
        redis.kill()
        if revived is not None:
            revived.kill()

"""Fallback chains through the real proxy process with real upstream processes: the first
pool is down (killed), drained (admin API), overloaded (in-flight limit, queue full) or
failing (listed statuses), and the next pool of the chain answers, as its own model."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time

from tests.support.lbd_client import LbdClient
from tests.support.procs import free_port, start_upstream, upstream_requests, wait_for, wait_port

CONFIG = """
listen: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{access: false}}
default_pool: small
pools:
  small:
    match: {{models: [small-model]}}
    health: {{enabled: false}}
    retry: {{attempts: 2, backoff: {{base: 5ms, max: 10ms}}}}
    limits: {{max_inflight_per_backend: {inflight}, queue: {queue}, queue_timeout: 5s}}
    fallback: {{chain: [{{pool: big, model: big-model}}, {{pool: remote}}]}}
    backends: [{{url: "http://127.0.0.1:{small}", name: small-a}}]
  strict:
    match: {{models: [strict-model]}}
    health: {{enabled: false}}
    retry: {{attempts: 1}}
    fallback: {{chain: [{{pool: remote}}], on_status: [429]}}
    backends: [{{url: "http://127.0.0.1:{small}"}}]
  big:
    health: {{enabled: false}}
    retry: {{attempts: 1}}
    backends: [{{url: "http://127.0.0.1:{big}"}}]
  remote:
    health: {{enabled: false}}
    backends: [{{url: "http://127.0.0.1:{remote}"}}]
"""
INFER = "/v2/models/small-model/versions/1/infer"
BODY = b'{"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'


def start(lbd, tmp_path, *, small: tuple = (), big: tuple = (), inflight: int = 0, queue: int = 0):
    """Upstreams ``small``, ``big`` and ``remote`` (extra arguments: ``--fail-status``...)
    and lbd in front of them; returns a client and the upstreams' processes and ports."""
    upstreams = {name: start_upstream(tmp_path, name, None, *extra)
                 for name, extra in (("small", small), ("big", big), ("remote", ()))}
    admin = free_port()
    _, port = lbd(CONFIG, admin=admin, inflight=inflight, queue=queue,
                  **{name: port for name, (_, port) in upstreams.items()})
    wait_port(admin)  # the admin API listens a moment after the proxy
    return LbdClient(port, admin), upstreams


def stop(upstreams) -> None:
    for proc, _ in upstreams.values():
        proc.stop()


def answered_by(response: http.client.HTTPResponse) -> tuple[str | None, str | None]:
    return response.getheader("x-lbd-pool"), response.getheader("x-upstream")


def test_a_killed_pool_falls_over_to_the_next_as_its_model(lbd, tmp_path):
    client, upstreams = start(lbd, tmp_path)
    try:
        response, body = client.call(INFER, BODY)
        assert response.status == 200 and answered_by(response) == ("small", "small")
        assert json.loads(body)["path"] == INFER
        upstreams["small"][0].signal(signal.SIGKILL)
        upstreams["small"][0].wait()
        for _ in range(3):
            response, body = client.call(INFER, BODY)
            assert response.status == 200 and answered_by(response) == ("big", "big")
            echoed = json.loads(body)
            assert echoed["path"] == "/v2/models/big-model/infer"  # the version belonged to the old model
            assert echoed["body_length"] == len(BODY)
            assert response.getheader("x-lbd-backend") == f"127.0.0.1:{upstreams['big'][1]}"
        assert client.metric("lbd_fallbacks_total", pool="small", to="big", reason="connect_failed") == 3
        assert client.metric("lbd_upstream_retries_total", pool="small") == 3  # its tries before it gave up
        assert client.metric("lbd_requests_total", pool="big", code="200") == 3
    finally:
        stop(upstreams)


def test_a_drained_pool_falls_over_and_takes_requests_again_when_undrained(lbd, tmp_path):
    client, upstreams = start(lbd, tmp_path)
    try:
        client.admin_post("/admin/backends/small/small-a/drain")
        response, body = client.call(INFER, BODY)
        assert response.status == 200 and answered_by(response) == ("big", "big")
        assert client.metric("lbd_fallbacks_total", pool="small", to="big", reason="no_backend") == 1
        assert upstream_requests(upstreams["small"][1]) == 0
        client.admin_post("/admin/backends/small/small-a/undrain")
        response, _ = client.call(INFER, BODY)
        assert answered_by(response) == ("small", "small")
    finally:
        stop(upstreams)


def test_a_json_body_names_the_new_model_even_when_it_arrives_after_the_fall_over(lbd, tmp_path):
    """The pool is drained, so the request falls over as soon as its head is read; the
    body (an OpenAI-style "model" field, length-framed or chunked) comes later and is
    rewritten before it goes to the next pool."""
    client, upstreams = start(lbd, tmp_path)
    port = client.port
    try:
        client.admin_post("/admin/backends/small/small-a/drain")
        body = json.dumps({"model": "small-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
        for chunked in (False, True):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.putrequest("POST", "/echo/v1/chat/completions")
            conn.putheader("content-type", "application/json")
            conn.putheader(*(("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body)))))
            conn.endheaders()
            time.sleep(0.3)
            conn.send(b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if chunked else body)
            response = conn.getresponse()
            echoed = json.loads(response.read())
            conn.close()
            assert response.status == 200 and answered_by(response) == ("big", "big")
            assert echoed["path"] == "/echo/v1/chat/completions"
            assert json.loads(echoed["body"]) == {"model": "big-model", "messages": [{"role": "user", "content": "hi"}]}
            assert echoed["body_length"] == len(echoed["body"].encode())
    finally:
        stop(upstreams)


def test_an_overloaded_pool_falls_over_when_saturated_or_its_queue_is_full(lbd, tmp_path):
    for queue, reason in ((0, "saturated"), (1, "queue_full")):
        client, upstreams = start(lbd, tmp_path, inflight=1, queue=queue)
        try:
            results: dict[str, tuple] = {}

            def send(name: str, path: str) -> None:
                response, _ = client.call(path)
                results[name] = (response.status, *answered_by(response))

            threads = [threading.Thread(target=send, args=("busy", "/slow?delay=1.5"))]
            threads[0].start()
            wait_for(lambda: upstream_requests(upstreams["small"][1]) == 1, 10, what="small busy")
            if queue:
                threads.append(threading.Thread(target=send, args=("queued", "/echo")))
                threads[-1].start()
                wait_for(lambda: client.metric("lbd_queue_waiting_requests", pool="small") == 1, 10, what="queued")
            send("over", "/echo")
            for thread in threads:
                thread.join(20)
            assert results["over"] == (200, "big", "big")
            assert results["busy"] == (200, "small", "small")
            if queue:
                assert results["queued"] == (200, "small", "small")  # it waited its turn
            assert client.metric("lbd_fallbacks_total", pool="small", reason=reason) == 1
        finally:
            stop(upstreams)


def test_listed_statuses_fall_over_along_the_chain_and_others_do_not(lbd, tmp_path):
    client, upstreams = start(lbd, tmp_path, small=("--fail-status", "503"), big=("--fail-status", "503"))
    try:
        response, body = client.call(INFER, BODY)
        assert response.status == 200 and answered_by(response) == ("remote", "remote")
        assert json.loads(body)["path"] == "/v2/models/big-model/infer"  # remote keeps the name it got
        assert upstream_requests(upstreams["small"][1]) == 2  # its retry first
        assert upstream_requests(upstreams["big"][1]) == 1
        assert client.metric("lbd_fallbacks_total", pool="small", to="big", reason="status_503") == 1
        assert client.metric("lbd_fallbacks_total", pool="big", to="remote", reason="status_503") == 1
        # strict falls over on 429 only: the backend's 503 is the answer
        response, body = client.call("/v2/models/strict-model/infer", BODY)
        assert response.status == 503 and answered_by(response) == ("strict", "small")
        assert json.loads(body) == {"failing": 503}
    finally:
        stop(upstreams)


def test_when_every_pool_of_the_chain_fails_the_last_error_is_the_answer(lbd, tmp_path):
    client, upstreams = start(lbd, tmp_path)
    try:
        for name in ("small", "big", "remote"):
            upstreams[name][0].signal(signal.SIGKILL)
            upstreams[name][0].wait()
        response, body = client.call(INFER, BODY)
        assert response.status == 502 and json.loads(body)["code"] == "connect_failed"
        assert "127.0.0.1:%d" % upstreams["remote"][1] in json.loads(body)["error"]
        assert client.metric("lbd_fallbacks_total", pool="small", to="big") == 1
        assert client.metric("lbd_fallbacks_total", pool="big", to="remote") == 1
    finally:
        stop(upstreams)


"""The jobs API's wire format: which requests it answers, what a submission keeps of the
client's request, and the JSON it answers with. No I/O here.

On the proxy port, under ``jobs.path_prefix`` (``/v1/jobs``)::

    POST|PUT|PATCH {prefix}/{path}          submit {path} (any path lbd routes) as a job: 202
    POST|PUT|PATCH {prefix}/batch/{path}    a batch: {"requests": [BODY, ...]}, one job per BODY
    GET    {prefix}/{id}                    a job's or a batch's status (JSON)
    GET    {prefix}/{id}/result             a succeeded job's response, as the backend sent it
    DELETE {prefix}/{id}                    cancel a queued job (or a batch's queued jobs)

and any routed request with ``Prefer: respond-async`` (RFC 7240) is submitted too.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from lbd.jobs.base import PRIORITY_NAMES, BatchRecord, JobRecord
from lbd.proxy.http import status_line

__all__ = ["Call", "parse_call", "prefers_async", "kept_preferences", "stored_headers", "priority_from",
           "batch_bodies", "job_view", "batch_view", "json_response", "CREDENTIAL_FIELDS", "CALLBACK_HEADER"]

CALLBACK_HEADER = b"x-lbd-callback"
CREDENTIAL_FIELDS = frozenset({b"authorization", b"proxy-authorization", b"x-api-key", b"api-key", b"cookie"})
"""Never stored with a job: a job runs as its tenant, with no key (nor a session cookie)."""
_NOT_KEPT = frozenset({
    b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"upgrade", b"expect", b"x-request-id", b"x-lbd-timeout-ms", CALLBACK_HEADER,
}) | CREDENTIAL_FIELDS
_SUBMIT_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@dataclass(frozen=True)
class Call:
    """A request for the jobs API: ``submit`` / ``batch`` (``target``: the path to run, with
    its query), ``status`` / ``result`` / ``cancel`` (``id``), or ``bad`` (``message``)."""

    kind: str
    target: str = ""
    id: str = ""
    message: str = ""


def parse_call(prefix: bytes, method: bytes, url: bytes) -> Call | None:
    """What a request under the prefix asks for; ``None`` when it is not under it."""
    path, _, query = url.partition(b"?")
    if path != prefix and not path.startswith(prefix + b"/"):
        return None
    rest = path[len(prefix):].decode("latin-1")
    if method in _SUBMIT_METHODS:
        batch = rest.startswith("/batch/") or rest == "/batch"
        inner = rest[len("/batch"):] if batch else rest
        if inner in ("", "/"):
            return Call("bad", message=f"name the path to run: {method.decode()} {prefix.decode()}/v2/models/NAME/infer")
        target = inner + ("?" + query.decode("latin-1") if query else "")
        return Call("batch" if batch else "submit", target=target)
    parts = rest.strip("/").split("/")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and (parts[1] != "result" or method != b"GET")):
        return Call("bad", message=f"not a jobs API path: {path.decode('latin-1')}")
    if method == b"GET":
        return Call("result" if len(parts) == 2 else "status", id=parts[0])
    if method == b"DELETE":
        return Call("cancel", id=parts[0])
    return Call("bad", message=f"{method.decode('latin-1')} is not allowed on a job; GET or DELETE it")


def prefers_async(value: str | None) -> bool:
    """Whether a ``Prefer`` field asks for ``respond-async`` (preference names are case-insensitive)."""
    return value is not None and any(
        part.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async" for part in value.split(","))


def kept_preferences(value: str) -> str | None:
    """A ``Prefer`` field without ``respond-async`` and ``wait`` (they were for lbd), or ``None``."""
    kept = [part.strip() for part in value.split(",")
            if part.split(";", 1)[0].split("=", 1)[0].strip().lower() not in ("respond-async", "wait")]
    return ", ".join(part for part in kept if part) or None


def stored_headers(headers: list[tuple[bytes, bytes]], also_drop: frozenset[bytes]) -> tuple[tuple[str, str], ...]:
    """The fields a job keeps: no credentials, framing, lbd's own controls or ``also_drop``
    (the pool's API key and priority headers); ``Prefer`` without ``respond-async``."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in _NOT_KEPT or lowered in also_drop:
            continue
        text = value.decode("latin-1")
        if lowered == b"prefer":
            text = kept_preferences(text)  # type: ignore[assignment]
            if text is None:
                continue
        kept.append((name.decode("latin-1"), text))
    return tuple(kept)


def priority_from(value: str | None, default: str) -> int:
    """``high`` / ``normal`` / ``low`` (or a number: above 0 high, below 0 low) to 0 / 1 / 2."""
    text = (value or default).strip().lower()
    if text in PRIORITY_NAMES:
        return PRIORITY_NAMES.index(text)
    try:
        number = int(text)
    except ValueError:
        return PRIORITY_NAMES.index(default)
    return 0 if number > 0 else 2 if number < 0 else 1


def batch_bodies(body: bytes) -> list[bytes] | str:
    """The bodies of a batch ``{"requests": [BODY, ...]}`` (each BODY sent as JSON), or why not."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return f"a batch is JSON: {error}"
    requests = document.get("requests") if isinstance(document, dict) else None
    if not isinstance(requests, list) or not requests:
        return 'a batch is {"requests": [BODY, ...]} with at least one BODY'
    return [orjson.dumps(item) for item in requests]


def job_view(record: JobRecord, prefix: str) -> dict[str, Any]:
    """A job as the API shows it; ``response.body`` is text when it is UTF-8, else
    ``response.body_base64``."""
    view: dict[str, Any] = {
        "id": record.id, "state": record.state, "pool": record.pool, "priority": PRIORITY_NAMES[record.priority],
        "attempts": record.attempts, "request": {"method": record.method, "target": record.target},
        "submitted_at": record.submitted_at, "started_at": record.started_at, "finished_at": record.finished_at,
        "location": f"{prefix}/{record.id}",
    }
    if record.batch:
        view["batch"] = record.batch
    if record.error:
        view["error"] = record.error
    response = record.response
    if response is not None:
        shown: dict[str, Any] = {"status": response.status, "headers": [list(pair) for pair in response.headers]}
        try:
            shown["body"] = response.body.decode("utf-8")
        except UnicodeDecodeError:
            shown["body_base64"] = base64.b64encode(response.body).decode()
        view["response"] = shown
    if record.webhook is not None:
        hook = record.webhook
        view["webhook"] = {"url": hook.url, "state": hook.state, "attempts": hook.attempts,
                           "last_status": hook.last_status, "last_error": hook.last_error,
                           "delivered_at": hook.delivered_at}
    return view


def batch_view(batch: BatchRecord, states: list[str | None], prefix: str) -> dict[str, Any]:
    """A batch: its jobs' states counted (``expired`` for records already gone), and its
    state: ``running`` until every job is over, then ``succeeded`` when all did, else
    ``failed`` (``cancelled`` when every job was)."""
    counts = {name: 0 for name in ("queued", "running", "succeeded", "failed", "cancelled", "expired")}
    for state in states:
        counts[state or "expired"] = counts.get(state or "expired", 0) + 1
    open_jobs = counts["queued"] + counts["running"]
    if open_jobs:
        state = "queued" if counts["queued"] == len(states) else "running"
    elif counts["cancelled"] == len(states):
        state = "cancelled"
    else:
        state = "succeeded" if counts["succeeded"] == len(states) else "failed"
    return {"id": batch.id, "state": state, "pool": batch.pool, "total": len(states), "counts": counts,
            "submitted_at": batch.created_at, "jobs": batch.jobs, "location": f"{prefix}/{batch.id}"}


def json_response(status: int, payload: Any, request_id: bytes, *, keep_alive: bool = True,
                  extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    body = orjson.dumps(payload)
    head = [status_line(status), b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"x-request-id: %b\r\n" % request_id]
    head.extend(b"%b: %b\r\n" % pair for pair in extra_headers)
    head.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
    head.append(body)
    return b"".join(head)

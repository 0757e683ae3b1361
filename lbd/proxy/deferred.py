"""The jobs stage: a request submitted as a job is stored and answered ``202 Accepted`` at
once instead of going upstream; the jobs API (status, result, cancel) is answered here too.

A request is a submission when it carries ``Prefer: respond-async`` (RFC 7240; ignored, and
the request served at once, on a pool whose jobs are off) or is sent under the jobs prefix
(``POST /v1/jobs/v2/models/m/infer``, or ``/v1/jobs/batch/...`` for a batch). It is routed,
authenticated and rate-limited like any request; then, instead of the cache and the attempts:

1. its whole body is kept (up to ``jobs.max_body_size``; 413 beyond);
2. the job is stored, as the tenant its key named but without the key, and queued, in a
   coroutine resuming by callback (:meth:`Admission._await`);
3. ``202`` with the job id and ``Location`` (``Preference-Applied: respond-async`` for the
   Prefer form), or ``503`` with ``Retry-After`` when the pool's queue is full or the store
   is away.

The jobs API needs no backend: ``_jobs_call`` answers it before routing, authenticating the
caller against the job's pool (a job is visible to its tenant only; to others it does not
exist). A job's own run (``Internal.tag == "job"``) passes through untouched, so it is never
submitted again. Requests that are none of these pay two attribute tests and a prefix test
(the ``Prefer`` field is noted by the pass over the fields that builds the upstream head);
a submission's own steps live in :class:`Submitting`, which only submissions become.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.jobs.api import (
    CALLBACK_HEADER, CREDENTIAL_FIELDS, Call, json_response, parse_call, prefers_async, priority_from, stored_headers,
)
from lbd.jobs.base import NewJob
from lbd.jobs.service import Accepted, Found, Refused, new_id
from lbd.jobs.webhook import check_url
from lbd.proxy.policies import Policies
from lbd.proxy.http import status_line

if TYPE_CHECKING:
    from lbd.jobs.service import Jobs
    from lbd.proxy.pool import Pool

__all__ = ["Deferred", "Submitting"]

_RESULT_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "x-request-id"})


class _Submission:
    __slots__ = ("kind", "target", "prefer", "parts", "size", "ready")

    def __init__(self, kind: str, target: str, prefer: bool) -> None:
        self.kind = kind
        self.target = target
        self.prefer = prefer
        self.parts: list[bytes] = []
        self.size = 0
        self.ready = False
        """Admitted: store it once the body is complete."""


class Deferred(Policies):
    """The jobs API, and the detection of submissions; :class:`~lbd.proxy.exchange.Exchange`
    calls :meth:`_jobs_call` first. A submission then becomes a :class:`Submitting` exchange."""

    __slots__ = ("_job",)
    """Set only on a submission (a slot left unset costs the other requests nothing)."""

    # -- before routing -------------------------------------------------------------------------
    def _jobs_call(self) -> bool:
        """True when the jobs API answers this request (the exchange does nothing more);
        a submission is marked here and goes on to routing and admission."""
        client = self.client
        jobs = client.server.jobs
        if jobs is None:
            return False
        internal = client.internal
        if internal is not None and internal.tag == "job":
            return False
        if self.url.startswith(jobs.prefix_bytes):
            call = parse_call(jobs.prefix_bytes, self.method, self.url)
            if call is not None:
                return self._api(jobs, call)
        prefer = self.fields.prefer  # found by the head's one pass over the fields
        if prefer is not None and prefers_async(prefer.decode("latin-1")):
            server = client.server
            pool = internal.route(self, server) if internal is not None else server.runtime.router.route(self)
            if pool is not None and pool.config.jobs.enabled:
                self._become_submission(_Submission("submit", _origin_form(self.url), prefer=True))
        return False

    def _become_submission(self, job: _Submission) -> None:
        self._job = job
        self.__class__ = _submitting(type(self))  # type: ignore[assignment]

    def _api(self, jobs: Jobs, call: Call) -> bool:
        if call.kind == "bad":
            self.fail(404, "not_found", call.message)
            return True
        if call.kind in ("submit", "batch"):
            self._become_submission(_Submission(call.kind, call.target, prefer=False))
            self._path = call.target.partition("?")[0]  # routed by the path it names
            return False
        self._await(jobs.lookup(call.id), lambda found: self._found(jobs, call, found))
        return True

    # -- the API: status, result, cancel ----------------------------------------------------------
    def _found(self, jobs: Jobs, call: Call, found: Found | Refused) -> None:
        if isinstance(found, Refused):
            self._refuse(found)
            return
        if found.job is None and found.batch is None:
            self.fail(404, "job_not_found", f"no job {call.id!r} (unknown, or expired)")
            return
        pool = self.client.server.runtime.pools.get(found.pool)
        if pool is not None and pool.auth is not None and not self._authenticate(pool):
            return
        if self.tenant != found.tenant:  # another tenant's job does not exist for this one
            self.fail(404, "job_not_found", f"no job {call.id!r} (unknown, or expired)")
            return
        if call.kind == "cancel" and found.job is not None and found.job.state != "queued":
            self._cannot_cancel(jobs, found)
        elif call.kind == "cancel":
            self._await(jobs.cancel(found), lambda after: self._cancelled(jobs, after))
        elif call.kind == "result":
            self._result(jobs, found)
        else:
            self._respond(200, jobs.view(found))

    def _cancelled(self, jobs: Jobs, after: Found | Refused) -> None:
        if isinstance(after, Refused):
            self._refuse(after)
        elif after.job is None and after.batch is None:
            self.fail(404, "job_not_found", "the job expired")
        elif after.batch is not None or after.job.state == "cancelled":  # type: ignore[union-attr]
            self._respond(200, jobs.view(after))
        else:
            self._cannot_cancel(jobs, after)

    def _cannot_cancel(self, jobs: Jobs, found: Found) -> None:
        state = found.job.state  # type: ignore[union-attr]
        self._respond(409, {"error": f"the job is {state}: only a queued job can be cancelled",
                            "code": "job_running" if state == "running" else "job_finished", "job": jobs.view(found)})

    def _result(self, jobs: Jobs, found: Found) -> None:
        record = found.job
        if record is None:
            self.fail(400, "batch_result", "a batch has no one result: GET each of its jobs' results")
            return
        response = record.response
        if response is None or record.state not in ("succeeded", "failed"):
            self._respond(409, {"error": f"the job is {record.state} and has no response", "code": "job_no_result",
                                "job": jobs.view(found)})
            return
        out = [status_line(response.status)]
        for name, value in response.headers:
            if name not in _RESULT_FRAMING:
                out.append(b"%b: %b\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        out.append(b"content-length: %d\r\nx-lbd-job: %b\r\n" % (len(response.body), record.id.encode()))
        self._write(response.status, out, response.body)

    # -- answers ----------------------------------------------------------------------------------
    def _refuse(self, refused: Refused) -> None:
        extra = () if refused.retry_after is None else ((b"retry-after", b"%d" % refused.retry_after),)
        self.fail(refused.status, refused.code, refused.message, *extra)

    def _respond(self, status: int, payload: object, *extra: tuple[bytes, bytes]) -> None:
        if not self.request_done:
            self.keep_alive = False
        data = json_response(status, payload, self.fields.request_id, keep_alive=self.keep_alive,  # type: ignore[arg-type]
                             extra_headers=(*extra, *self._extra_fields))
        self.status = status
        self.client.write(data)
        self._finish()  # type: ignore[attr-defined]

    def _write(self, status: int, head: list[bytes], body: bytes) -> None:
        if not self.request_done:
            self.keep_alive = False
        head.append(b"x-request-id: %b\r\n" % self.fields.request_id)
        head.append(b"\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        self.status = status
        self.client.write(b"".join(head) + body)
        self._finish()  # type: ignore[attr-defined]


class Submitting:
    """What differs for a submission: its body is kept whole (not streamed upstream), and
    after admission it is stored as a job instead of going to the cache and the attempts.

    A request found to be a submission has its class switched to a subclass of its own class
    with this mixin first (:func:`_submitting`: no slots of its own, so the layout is the
    same). The other requests never pass through these overrides: measured with
    ``bench/proxy/hotpath.py``, overriding them in :class:`Deferred` for everyone cost about
    1 µs a request (4%).
    """

    __slots__ = ()

    def _proceed(self) -> None:
        """Admitted: check what only a submission must pass, then store it once its body is in."""
        job: _Submission = self._job
        self._path = None  # the access log shows the path as sent
        pool: Pool = self.pool  # type: ignore[assignment]
        if not pool.config.jobs.enabled:
            self.fail(403, "jobs_disabled", f"pool {pool.name!r} does not take jobs")
            return
        problem = self._callback_problem()
        if problem is not None:
            self.fail(400, "bad_callback", problem)
            return
        job.ready = True
        if self.request_done:
            self._submit(job)

    def _callback_problem(self) -> str | None:
        callback = self.header(CALLBACK_HEADER.decode())
        if callback is None:
            return None
        jobs: Jobs = self.client.server.jobs  # type: ignore[assignment]
        if jobs.secret is None:
            return "callbacks need a signing secret: set jobs.webhook.secret (or secret_file)"
        return check_url(callback, jobs.config.webhook)

    def on_request_body(self, data: bytes) -> None:
        job: _Submission = self._job
        if self.finished:
            return
        job.size += len(data)
        limit = self.client.server.jobs.config.max_body_size  # type: ignore[union-attr]
        if job.size > limit:
            self.fail(413, "body_too_large", f"a job's body may be at most {limit} bytes (jobs.max_body_size)")
            return
        job.parts.append(data)

    def on_request_end(self) -> None:
        job: _Submission = self._job
        self.request_done = True
        if job.ready and not self.finished:
            self._submit(job)

    def _submit(self, job: _Submission) -> None:
        jobs: Jobs = self.client.server.jobs  # type: ignore[assignment]
        pool: Pool = self.pool  # type: ignore[assignment]
        body = b"".join(job.parts)
        job.parts = []
        drop = {pool.config.limits.priority_header.encode()}
        if pool.auth is not None:
            drop.add(pool.auth.header)
        headers = stored_headers(self.headers, frozenset(drop) | CREDENTIAL_FIELDS)
        if job.kind == "batch":  # each BODY is sent as JSON
            headers = tuple(p for p in headers if p[0].lower() != "content-type") + (("content-type", "application/json"),)
        priority = priority_from(self.header(pool.config.limits.priority_header), pool.config.jobs.priority)
        new = NewJob(new_id(), pool.name, self.method.decode("latin-1"), job.target, headers, body, self.tenant,
                     priority, self.client_ip, self.header(CALLBACK_HEADER.decode()))
        max_queue = pool.config.jobs.max_queue or jobs.config.max_queue
        submitted = jobs.submit_batch(new, body, max_queue) if job.kind == "batch" else jobs.submit([new], max_queue)
        self._await(submitted, lambda result: self._submitted(jobs, job, result))

    def _submitted(self, jobs: Jobs, job: _Submission, result: Accepted | Refused) -> None:
        if isinstance(result, Refused):
            self._refuse(result)
            return
        item = result.batch or result.ids[0]
        location = f"{jobs.prefix}/{item}"
        payload: dict = {"id": item, "state": "queued", "location": location}
        if result.batch is not None:
            payload["jobs"] = result.ids
        extra = [(b"location", location.encode())]
        if job.prefer:
            extra.append((b"preference-applied", b"respond-async"))
        self._respond(202, payload, *extra)


_SUBMITTING: dict[type, type] = {}


def _submitting(cls: type) -> type:
    """``cls`` (the exchange class) with :class:`Submitting` first, made once."""
    made = _SUBMITTING.get(cls)
    if made is None:
        made = _SUBMITTING[cls] = type("Submitting" + cls.__name__, (Submitting, cls), {"__slots__": ()})
    return made


def _origin_form(url: bytes) -> str:
    """``/path?query`` of a request target (an absolute-form target loses its authority)."""
    if not url.startswith(b"/"):
        _, _, rest = url.partition(b"//")
        url = b"/" + rest.partition(b"/")[2]
    return url.decode("latin-1")

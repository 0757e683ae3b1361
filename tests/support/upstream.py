"""A real upstream HTTP server for the proxy's integration tests (run as its own process).

    python tests/support/upstream.py --port 18001 --name a

Every response carries ``x-upstream: NAME``. Endpoints:
  GET|POST /echo          JSON: method, path, query, headers, body length, body sha256
  POST /sink              reads the body as a stream: byte count and sha256
  GET /bytes?size=N&chunked=1  N bytes of a repeating pattern, streamed
  GET /sse?n=N&interval=S      N server-sent events, one every S seconds
  GET /slow?delay=S       answers after S seconds
  GET /status/CODE        answers CODE with a JSON body
  GET /close              answers with ``connection: close``
  *   /cc?value=V         like /echo, with ``Cache-Control: V`` on the answer
  GET /stats              how many requests this server answered (itself not counted)
With ``--fail-status 503`` every request but /stats gets that status.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json

from aiohttp import web

PATTERN = bytes(range(256)) * 256  # 64 KiB


def _json(request: web.Request, payload: dict, status: int = 200, **headers: str) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json",
                        headers={"x-upstream": request.app["name"], **headers})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return _json(request, {
        "method": request.method, "path": request.path, "query": request.query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
        "body": body.decode("utf-8", "replace") if len(body) < 4096 else None,
        "peer_port": request.transport.get_extra_info("peername")[1] if request.transport else None,
    })


async def cache_control(request: web.Request) -> web.Response:
    response = await echo(request)
    response.headers["cache-control"] = request.query.get("value", "")
    return response


async def sink(request: web.Request) -> web.Response:
    digest, total = hashlib.sha256(), 0
    async for piece in request.content.iter_any():
        digest.update(piece)
        total += len(piece)
    return _json(request, {"bytes": total, "sha256": digest.hexdigest()})


async def stream_bytes(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "0"))
    response = web.StreamResponse(headers={"x-upstream": request.app["name"], "content-type": "application/octet-stream"})
    if request.query.get("chunked") == "1":
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    sent = 0
    while sent < size:
        piece = PATTERN[: min(len(PATTERN), size - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    count, interval = int(request.query.get("n", "3")), float(request.query.get("interval", "0.2"))
    response = web.StreamResponse(headers={"x-upstream": request.app["name"], "content-type": "text/event-stream",
                                           "cache-control": "no-cache"})
    await response.prepare(request)
    for index in range(count):
        await response.write(f"id: {index}\ndata: event {index}\n\n".encode())
        await asyncio.sleep(interval)
    await response.write_eof()
    return response


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "1")))
    return _json(request, {"slept": True})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return _json(request, {"status": code}, status=code)


async def close(request: web.Request) -> web.Response:
    response = _json(request, {"closing": True})
    response.force_close()
    return response


@web.middleware
async def counting(request: web.Request, handler):
    """Counts requests; ``/stats`` reads the count; ``--fail-status`` answers every other
    path with that status (a backend that is up but failing)."""
    if request.path == "/stats":
        return _json(request, {"requests": request.app["requests"]})
    request.app["requests"] += 1
    failing = request.app["fail_status"]
    if failing:
        await request.read()
        headers = {"retry-after": request.app["retry_after"]} if request.app["retry_after"] else {}
        return _json(request, {"failing": failing}, status=failing, **headers)
    return await handler(request)


def make_app(name: str, fail_status: int = 0, retry_after: str = "") -> web.Application:
    app = web.Application(client_max_size=2**40, middlewares=[counting])
    app["name"] = name
    app["requests"] = 0
    app["fail_status"] = fail_status
    app["retry_after"] = retry_after
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_route("*", "/v2/{tail:.*}", echo)
    app.router.add_route("*", "/cc", cache_control)
    app.router.add_post("/sink", sink)
    app.router.add_get("/bytes", stream_bytes)
    app.router.add_get("/sse", sse)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/close", close)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--fail-status", type=int, default=0)
    parser.add_argument("--retry-after", default="")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (and --tls-key)")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    args = parser.parse_args()
    context = None
    if args.tls_cert:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            context.load_verify_locations(args.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    web.run_app(make_app(args.name, args.fail_status, args.retry_after), ssl_context=context, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, infer_types=True
"""A compiled data-plane lane on uvloop: how fast lbd's request path can be with its features on.

A benchmark prototype, not a product. uvloop protocol objects written as Cython cdef classes
(uvloop duck-types them: connection_made, data_received, eof_received, connection_lost,
pause_writing, resume_writing). Per request, everything below is done in C except two
Python-level calls that stand for "Python decides" and "the deadline": the balancer's pick()
and loop.call_at() (+ TimerHandle.cancel()).

Client side (ClientConn):
  * bytes accumulate until CRLFCRLF; the request line and headers are parsed in C, a strict
    subset: token method, origin-form target (starts with "/", visible ASCII), HTTP/1.1 or
    HTTP/1.0, token header names with the colon right after them, no obs-fold, no bare CR or
    bare LF, at most 100 headers and 32 KiB of head, exactly one Host for HTTP/1.1, exactly
    one valid Content-Length (digits only) or none. Anything else: 400 and close (431 for a
    head over 32 KiB). Any Transfer-Encoding on a request: 501 and close (chunked request
    bodies are not implemented).
  * keep-alive per version and Connection header (1.1: unless "close"; 1.0: only with
    "keep-alive"); the response says "Connection: close" / "Connection: keep-alive" as needed.
  * the upstream head is built in C: "METHOD TARGET HTTP/1.1", every header line copied as it
    came except hop-by-hop ones (Connection and the headers it names, Keep-Alive,
    Proxy-Connection, TE, Trailer, Upgrade, Proxy-Authorization), X-Forwarded-For (incoming
    values, then the client's IP, like nginx's $proxy_add_x_forwarded_for),
    X-Forwarded-Proto: http (replaces the incoming one), X-Request-ID (propagated when the
    client sent one of 1-127 bytes, else generated: 32 hex digits from pid, start time and
    a counter). Head and the body bytes already read go out in one transport.write; the
    rest of a Content-Length body is streamed as it arrives (also across reads).
  * one request in flight per client connection: bytes after the request's body (a
    pipelined request) are dropped and the connection is closed after the response.
Upstream side (Backend, UpstreamConn):
  * the upstream is picked by calling lane.balancer.pick() (a plain Python object, see
    lane_proxy.py) once per request; each Backend keeps a list of idle keep-alive
    connections; when none is idle a new one is opened with loop.create_connection (the
    request waits in a pending list until it connects).
  * the response's status line and headers are parsed in C (HTTP/1.x, 3-digit status >= 200;
    1xx interim responses are not supported: 502). Framing: none for HEAD/204/304,
    Transfer-Encoding: chunked passed through as is (a C state machine finds its end; it is
    not re-encoded, also not for an HTTP/1.0 client), Content-Length, or read-until-close
    (then the client connection is closed after it too). Hop-by-hop headers are dropped
    (Transfer-Encoding is kept since chunked passes through), x-lbd-backend: host:port and
    X-Request-ID are added; head and the body bytes of the same read go to the client in one
    write, later body bytes are written as they come (the read's bytes object as is).
  * after a complete response on a reusable (keep-alive) upstream connection it goes back
    to the idle list; otherwise it is closed.
  * back-pressure both ways: pause_writing on one side pauses reading on the other.
Per request also: a deadline timer (loop.call_at, cancelled on completion; on expiry the
client gets 504 when no response head was sent yet, and both connections are closed) and
counters in a Stats object readable from Python (C increments of its public attributes,
what compiled metrics would cost). Upstream connect failure or an upstream close before the
response head: 502 with a JSON body and close; an upstream close or a malformed chunk after
the head: the client connection is closed (the response cannot be fixed then).

Not done: retries (a stale idle upstream connection closed by the upstream gives 502), health
checks, routing, TLS, chunked request bodies, a cap on or timeout for idle upstream
connections (the idle list grows to the peak concurrency per upstream), idle/read timeouts
on client connections while no request is in flight, access logs, Expect: 100-continue
handling (passed through to the upstream), de-chunking for HTTP/1.0 clients.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy

import os
import time

cdef extern from "strings.h":
    int strncasecmp(const char *a, const char *b, size_t n)


DEF MAX_HEADERS = 100
DEF MAX_TOKENS = 16
DEF MAX_HEAD = 32768
DEF RID_MAX = 127

# header kinds
DEF H_OTHER = 0
DEF H_CONNECTION = 1
DEF H_KEEP_ALIVE = 2
DEF H_PROXY_CONNECTION = 3
DEF H_TE = 4
DEF H_TRAILER = 5
DEF H_UPGRADE = 6
DEF H_PROXY_AUTHORIZATION = 7
DEF H_PROXY_AUTHENTICATE = 8
DEF H_TRANSFER_ENCODING = 9
DEF H_CONTENT_LENGTH = 10
DEF H_HOST = 11
DEF H_XFF = 12
DEF H_XFP = 13
DEF H_XRID = 14
DEF H_XLBD = 15

# client states
DEF C_HEAD = 0      # waiting for (the rest of) a request head
DEF C_BODY = 1      # request body still arriving
DEF C_WAIT = 2      # request sent, waiting for the response to complete
DEF C_CLOSED = 3

# upstream states
DEF U_IDLE = 0
DEF U_HEAD = 1
DEF U_CL = 2
DEF U_CHUNKED = 3
DEF U_EOF = 4

# chunked scanner states
DEF CS_SIZE = 0
DEF CS_EXT = 1
DEF CS_SIZE_LF = 2
DEF CS_DATA = 3
DEF CS_DATA_CR = 4
DEF CS_DATA_LF = 5
DEF CS_TRAILER = 6
DEF CS_TRAILER_LINE = 7
DEF CS_TRAILER_LF = 8
DEF CS_END_LF = 9
DEF CS_DONE = 10


# --------------------------------------------------------------------------- buffers

cdef struct Buf:
    char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef int buf_grow(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 4096
    cdef char *p
    while cap < b.len + extra:
        cap *= 2
    p = <char *>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int buf_add(Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        buf_grow(b, n)
    memcpy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef inline int buf_addb(Buf *b, bytes s) except -1:
    return buf_add(b, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))


cdef Buf g_out          # scratch for the head being built (single-threaded, used synchronously)


# --------------------------------------------------------------------------- character classes

cdef unsigned char TCHAR[256]
cdef int HEXVAL[256]


cdef void _init_tables():
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        HEXVAL[c] = -1
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        TCHAR[c] = 1
    for c in range(10):
        HEXVAL[48 + c] = c
    for c in range(6):
        HEXVAL[97 + c] = 10 + c
        HEXVAL[65 + c] = 10 + c


_init_tables()


# --------------------------------------------------------------------------- head parsing

cdef struct Hdr:
    Py_ssize_t line          # start of the line (= of the name)
    Py_ssize_t name_len
    Py_ssize_t value         # value without surrounding OWS
    Py_ssize_t value_len
    Py_ssize_t end           # just past the line's CRLF
    int kind

cdef Hdr g_h[MAX_HEADERS]
cdef Py_ssize_t g_tok[MAX_TOKENS]      # Connection tokens naming other headers
cdef Py_ssize_t g_tok_len[MAX_TOKENS]
cdef int g_ntok


cdef Py_ssize_t find_head_end(const char *p, Py_ssize_t n, Py_ssize_t start):
    """Index just past CRLFCRLF; -1 when not there yet; -2 on a bare LF."""
    cdef Py_ssize_t i = start, j
    cdef const char *q
    while i < n:
        q = <const char *>memchr(p + i, b'\n', n - i)
        if q == NULL:
            return -1
        j = q - p
        if j == 0 or p[j - 1] != b'\r':
            return -2
        if j >= 3 and p[j - 2] == b'\n' and p[j - 3] == b'\r':
            return j + 1
        i = j + 1
    return -1


cdef int classify(const char *s, Py_ssize_t n):
    if n == 2:
        if strncasecmp(s, "te", 2) == 0: return H_TE
    elif n == 4:
        if strncasecmp(s, "host", 4) == 0: return H_HOST
    elif n == 7:
        if strncasecmp(s, "trailer", 7) == 0: return H_TRAILER
        if strncasecmp(s, "upgrade", 7) == 0: return H_UPGRADE
    elif n == 10:
        if strncasecmp(s, "connection", 10) == 0: return H_CONNECTION
        if strncasecmp(s, "keep-alive", 10) == 0: return H_KEEP_ALIVE
    elif n == 12:
        if strncasecmp(s, "x-request-id", 12) == 0: return H_XRID
    elif n == 13:
        if strncasecmp(s, "x-lbd-backend", 13) == 0: return H_XLBD
    elif n == 14:
        if strncasecmp(s, "content-length", 14) == 0: return H_CONTENT_LENGTH
    elif n == 15:
        if strncasecmp(s, "x-forwarded-for", 15) == 0: return H_XFF
    elif n == 16:
        if strncasecmp(s, "proxy-connection", 16) == 0: return H_PROXY_CONNECTION
    elif n == 17:
        if strncasecmp(s, "transfer-encoding", 17) == 0: return H_TRANSFER_ENCODING
        if strncasecmp(s, "x-forwarded-proto", 17) == 0: return H_XFP
    elif n == 18:
        if strncasecmp(s, "proxy-authenticate", 18) == 0: return H_PROXY_AUTHENTICATE
    elif n == 19:
        if strncasecmp(s, "proxy-authorization", 19) == 0: return H_PROXY_AUTHORIZATION
    return H_OTHER


cdef int parse_headers(const char *p, Py_ssize_t i, Py_ssize_t hend):
    """Fill g_h from the header lines in p[i:hend] (hend just past CRLFCRLF); count or -1."""
    cdef int n = 0
    cdef Py_ssize_t s, v, e
    cdef unsigned char c
    while i < hend - 2:
        if n == MAX_HEADERS:
            return -1
        s = i
        while TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == s or p[i] != b':':        # empty name, obs-fold, space before the colon
            return -1
        g_h[n].line = s
        g_h[n].name_len = i - s
        i += 1
        while p[i] == b' ' or p[i] == b'\t':
            i += 1
        v = i
        while True:
            c = <unsigned char>p[i]
            if c == 13:
                break
            if (c < 32 and c != 9) or c == 127:
                return -1
            i += 1
        if p[i + 1] != b'\n':                # bare CR
            return -1
        e = i
        while e > v and (p[e - 1] == b' ' or p[e - 1] == b'\t'):
            e -= 1
        g_h[n].value = v
        g_h[n].value_len = e - v
        i += 2
        g_h[n].end = i
        g_h[n].kind = classify(p + s, g_h[n].name_len)
        n += 1
    return n


cdef int parse_connection(const char *p, Py_ssize_t v, Py_ssize_t vlen, int *flags):
    """Tokens of a Connection value: sets flags (1 close, 2 keep-alive), adds the others to
    g_tok; -1 when it is not a token list."""
    cdef Py_ssize_t i = v, end = v + vlen, s
    global g_ntok
    while i < end:
        while i < end and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
            i += 1
        if i == end:
            break
        s = i
        while i < end and TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == s:
            return -1
        if i - s == 5 and strncasecmp(p + s, "close", 5) == 0:
            flags[0] |= 1
        elif i - s == 10 and strncasecmp(p + s, "keep-alive", 10) == 0:
            flags[0] |= 2
        else:
            if g_ntok == MAX_TOKENS:
                return -1
            g_tok[g_ntok] = s
            g_tok_len[g_ntok] = i - s
            g_ntok += 1
        while i < end and (p[i] == b' ' or p[i] == b'\t'):
            i += 1
        if i < end and p[i] != b',':
            return -1
    return 0


cdef bint named_by_connection(const char *p, Hdr *h):
    cdef int t
    for t in range(g_ntok):
        if g_tok_len[t] == h.name_len and strncasecmp(p + g_tok[t], p + h.line, h.name_len) == 0:
            return True
    return False


cdef long long parse_length(const char *p, Py_ssize_t v, Py_ssize_t n):
    cdef long long value = 0
    cdef Py_ssize_t i
    if n == 0 or n > 15:
        return -1
    for i in range(v, v + n):
        if p[i] < b'0' or p[i] > b'9':
            return -1
        value = value * 10 + (p[i] - 48)
    return value


# --------------------------------------------------------------------------- canned answers

def _error(int status, str reason, str message):
    body = b'{"error":"%s"}' % message.encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))


cdef bytes BAD_REQUEST = _error(400, "Bad Request", "malformed or unsupported request")
cdef bytes TOO_LARGE = _error(431, "Request Header Fields Too Large", "request head too large")
cdef bytes NOT_IMPLEMENTED = _error(501, "Not Implemented", "transfer-encoding not supported")
cdef bytes BAD_GATEWAY = _error(502, "Bad Gateway", "upstream unreachable")
cdef bytes GATEWAY_TIMEOUT = _error(504, "Gateway Timeout", "upstream timed out")

cdef bytes S_HTTP11_CRLF = b" HTTP/1.1\r\n"
cdef bytes S_XFF = b"X-Forwarded-For: "
cdef bytes S_COMMA = b", "
cdef bytes S_CRLF = b"\r\n"
cdef bytes S_XFP = b"X-Forwarded-Proto: http\r\n"
cdef bytes S_XRID = b"X-Request-ID: "
cdef bytes S_HTTP11 = b"HTTP/1.1"
cdef bytes S_BACKEND = b"x-lbd-backend: "
cdef bytes S_CLOSE = b"Connection: close\r\n"
cdef bytes S_KEEP = b"Connection: keep-alive\r\n"

cdef unsigned long long g_rid_counter = 0
# generated request ids: 8 hex digits of the pid, 8 of the start time, 16 of a counter
cdef bytes g_rid_prefix = b"%08x%08x" % (os.getpid() & 0xffffffff, int(time.time()) & 0xffffffff)
cdef const char *HEX = b"0123456789abcdef"


cdef int make_request_id(char *out):
    global g_rid_counter
    cdef unsigned long long n
    cdef int i
    g_rid_counter += 1
    n = g_rid_counter
    memcpy(out, PyBytes_AS_STRING(g_rid_prefix), 16)
    for i in range(31, 15, -1):
        out[i] = HEX[n & 15]
        n >>= 4
    return 32


# --------------------------------------------------------------------------- shared objects

cdef class Stats:
    """Counters readable from Python (incremented in C)."""
    cdef public unsigned long long requests, responses, bad_requests, bad_gateway, timeouts
    cdef public unsigned long long upstream_connects

    def as_dict(self):
        return {"requests": self.requests, "responses": self.responses,
                "bad_requests": self.bad_requests, "bad_gateway": self.bad_gateway,
                "timeouts": self.timeouts, "upstream_connects": self.upstream_connects}


cdef class Backend:
    """One upstream address and its idle keep-alive connections."""
    cdef readonly str host
    cdef readonly int port
    cdef readonly bytes name
    cdef list idle
    cdef Lane lane

    def __cinit__(self, Lane lane, str host, int port):
        self.lane = lane
        self.host = host
        self.port = port
        self.name = ("%s:%d" % (host, port)).encode()
        self.idle = []

    def __repr__(self):
        return "Backend(%s, idle=%d)" % (self.name.decode(), len(self.idle))

    cdef UpstreamConn take_idle(self):
        cdef UpstreamConn up
        while self.idle:
            up = self.idle.pop()
            if not up.closed:
                return up
        return None

    cdef connect(self, UpstreamConn up):
        loop = self.lane.loop
        self.lane.stats.upstream_connects += 1
        task = loop.create_task(loop.create_connection(up._factory, self.host, self.port))
        task.add_done_callback(up._connect_done)


cdef class Lane:
    """Shared state: the loop, the backends, the Python balancer, the stats, the deadline."""
    cdef public object loop
    cdef public object balancer
    cdef public Stats stats
    cdef public list backends
    cdef public double timeout
    cdef object _time, _call_at

    def __init__(self, loop, addresses, double timeout=60.0):
        self.loop = loop
        self._time = loop.time
        self._call_at = loop.call_at
        self.timeout = timeout
        self.stats = Stats()
        self.backends = [Backend(self, host, port) for host, port in addresses]
        self.balancer = None

    def client(self):
        """Protocol factory for loop.create_server."""
        return ClientConn(self)


# --------------------------------------------------------------------------- client side

cdef class ClientConn:
    cdef Lane lane
    cdef object transport, write        # write: transport.write, bound once
    cdef bytes ip
    cdef UpstreamConn up
    cdef Buf inbuf
    cdef int state
    cdef long long body_left
    cdef bint keep_alive, http10, is_head
    cdef object timer, deadline_cb
    cdef char rid[RID_MAX + 1]
    cdef int rid_len

    def __cinit__(self, Lane lane):
        self.lane = lane
        self.state = C_HEAD

    def __dealloc__(self):
        free(self.inbuf.data)

    # uvloop protocol callbacks
    def connection_made(self, transport):
        self.transport = transport
        self.write = transport.write
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]).encode() if peer else b"unknown"
        self.deadline_cb = self._deadline

    def data_received(self, bytes data):
        cdef const char *p
        cdef Py_ssize_t n, hend, start
        if self.state == C_HEAD:
            if self.inbuf.len == 0:
                p = PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
                hend = find_head_end(p, n, 0)
                if hend == -1:
                    if n > MAX_HEAD:
                        self._reject(TOO_LARGE)
                    else:
                        buf_add(&self.inbuf, p, n)
                    return
            else:
                start = self.inbuf.len - 3 if self.inbuf.len > 3 else 0
                buf_add(&self.inbuf, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
                p = self.inbuf.data
                n = self.inbuf.len
                hend = find_head_end(p, n, start)
                if hend == -1:
                    if n > MAX_HEAD:
                        self._reject(TOO_LARGE)
                    return
            if hend == -2:
                self._reject(BAD_REQUEST)
            elif hend > MAX_HEAD:
                self._reject(TOO_LARGE)
            else:
                self._on_head(p, n, hend)
            self.inbuf.len = 0
        elif self.state == C_BODY:
            self._body(data)
        elif self.state == C_WAIT:
            self.keep_alive = False      # a pipelined request: dropped, closed after the response

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.state = C_CLOSED
        self._cancel_timer()
        up = self.up
        self.up = None
        if up is not None:            # client gone mid-request: the upstream cannot be reused
            up.client = None
            up.close()

    def pause_writing(self):
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self):
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    # request path
    cdef int _on_head(self, const char *p, Py_ssize_t n, Py_ssize_t hend) except -1:
        cdef Py_ssize_t i = 0, target_end, avail, take, extra
        cdef int nh, k, kind, flags = 0, hosts = 0, xrid = -1, lengths = 0, transfer = 0
        cdef long long length = 0
        cdef Hdr *h
        cdef bint first_xff = True
        global g_ntok
        # request line: METHOD SP /target SP HTTP/1.x CRLF
        while TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == 0 or p[i] != b' ':
            return self._reject(BAD_REQUEST)
        self.is_head = i == 4 and memcmp(p, b"HEAD", 4) == 0
        i += 1
        if p[i] != b'/':
            return self._reject(BAD_REQUEST)
        while 33 <= <unsigned char>p[i] <= 126:
            i += 1
        if p[i] != b' ':
            return self._reject(BAD_REQUEST)
        target_end = i
        i += 1
        if (i + 10 > hend or memcmp(p + i, b"HTTP/1.", 7) != 0
                or (p[i + 7] != b'1' and p[i + 7] != b'0') or p[i + 8] != b'\r'
                or p[i + 9] != b'\n'):
            return self._reject(BAD_REQUEST)
        self.http10 = p[i + 7] == b'0'
        nh = parse_headers(p, i + 10, hend)
        if nh < 0:
            return self._reject(BAD_REQUEST)
        g_ntok = 0
        for k in range(nh):
            kind = g_h[k].kind
            if kind == H_OTHER:
                continue
            if kind == H_CONTENT_LENGTH:
                lengths += 1
                length = parse_length(p, g_h[k].value, g_h[k].value_len)
            elif kind == H_HOST:
                hosts += 1
            elif kind == H_CONNECTION:
                if parse_connection(p, g_h[k].value, g_h[k].value_len, &flags) < 0:
                    return self._reject(BAD_REQUEST)
            elif kind == H_TRANSFER_ENCODING:
                transfer = 1
            elif kind == H_XRID:
                xrid = k
        if transfer:
            return self._reject(NOT_IMPLEMENTED)
        if lengths > 1 or length < 0 or hosts > 1 or (hosts == 0 and not self.http10):
            return self._reject(BAD_REQUEST)
        if self.http10:
            self.keep_alive = (flags & 2) and not (flags & 1)
        else:
            self.keep_alive = not (flags & 1)
        if xrid >= 0 and 0 < g_h[xrid].value_len <= RID_MAX:
            self.rid_len = g_h[xrid].value_len
            memcpy(self.rid, p + g_h[xrid].value, self.rid_len)
        else:
            self.rid_len = make_request_id(self.rid)
        # upstream head
        g_out.len = 0
        buf_add(&g_out, p, target_end)
        buf_addb(&g_out, S_HTTP11_CRLF)
        for k in range(nh):
            h = &g_h[k]
            kind = h.kind
            if kind == H_OTHER or kind == H_CONTENT_LENGTH or kind == H_HOST:
                if g_ntok and kind == H_OTHER and named_by_connection(p, h):
                    continue
                buf_add(&g_out, p + h.line, h.end - h.line)
            elif kind == H_XFF:
                buf_addb(&g_out, S_XFF if first_xff else S_COMMA)
                buf_add(&g_out, p + h.value, h.value_len)
                first_xff = False
            # everything else is hop-by-hop or replaced below
        if first_xff:
            buf_addb(&g_out, S_XFF)
        else:
            buf_addb(&g_out, S_COMMA)
        buf_addb(&g_out, self.ip)
        buf_addb(&g_out, S_CRLF)
        buf_addb(&g_out, S_XFP)
        buf_addb(&g_out, S_XRID)
        buf_add(&g_out, self.rid, self.rid_len)
        buf_add(&g_out, b"\r\n\r\n", 4)
        avail = n - hend
        take = length if length < avail else avail
        buf_add(&g_out, p + hend, take)
        self.body_left = length - take
        if avail > take:
            self.keep_alive = False     # pipelined request: dropped, closed after the response
        out = PyBytes_FromStringAndSize(g_out.data, g_out.len)
        self.state = C_BODY if self.body_left else C_WAIT
        lane = self.lane
        lane.stats.requests += 1
        self.timer = lane._call_at(lane._time() + lane.timeout, self.deadline_cb)
        backend = <Backend?>lane.balancer.pick()       # "Python decides"
        up = backend.take_idle()
        self.up = up
        if up is None:
            up = UpstreamConn(backend)
            self.up = up
            up.attach(self)
            up.pending = [out]
            backend.connect(up)
        else:
            up.attach(self)
            up.write(out)
        return 0

    cdef _body(self, bytes data):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if n > self.body_left:
            data = data[:self.body_left]
            n = self.body_left
            self.keep_alive = False
        self.body_left -= n
        if self.body_left == 0:
            self.state = C_WAIT
        if self.up is not None:
            self.up.send(data)

    cdef int _reject(self, bytes answer) except -1:
        self.lane.stats.bad_requests += 1
        self.state = C_CLOSED
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
        return 0

    cdef _cancel_timer(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _deadline(self):
        self.timer = None
        self.lane.stats.timeouts += 1
        up = self.up
        self.up = None
        head_sent = False
        if up is not None:
            head_sent = up.head_sent
            up.client = None
            up.close()
        self.state = C_CLOSED
        if not self.transport.is_closing():
            if not head_sent:
                self.transport.write(GATEWAY_TIMEOUT)
            self.transport.close()

    cdef response_done(self):
        self.up = None
        self._cancel_timer()
        self.lane.stats.responses += 1
        if self.keep_alive and self.state == C_WAIT:
            self.state = C_HEAD
        else:
            self.state = C_CLOSED
            self.transport.close()

    cdef upstream_failed(self, bint head_sent):
        self.up = None
        self._cancel_timer()
        self.state = C_CLOSED
        if not self.transport.is_closing():
            if not head_sent:
                self.lane.stats.bad_gateway += 1
                self.transport.write(BAD_GATEWAY)
            self.transport.close()


# --------------------------------------------------------------------------- upstream side

cdef class UpstreamConn:
    cdef Backend backend
    cdef object transport, write        # write: transport.write, bound once
    cdef ClientConn client
    cdef list pending              # request bytes waiting for the connection, else None
    cdef Buf inbuf
    cdef int state
    cdef long long left            # Content-Length bytes still to come
    cdef int cstate                # chunked scanner
    cdef long long csize
    cdef int cdigits
    cdef bint reuse, head_sent, closed

    def __cinit__(self, Backend backend):
        self.backend = backend
        self.state = U_IDLE

    def __dealloc__(self):
        free(self.inbuf.data)

    def _factory(self):
        return self

    def _connect_done(self, task):
        if task.cancelled():
            failed = True
        else:
            failed = task.exception() is not None
        if failed:
            self.closed = True
            self.pending = None
            client = self.client
            self.client = None
            if client is not None:
                client.upstream_failed(False)

    cdef attach(self, ClientConn client):
        self.client = client
        self.state = U_HEAD
        self.head_sent = False
        self.inbuf.len = 0

    cdef send(self, bytes data):
        if self.pending is not None:
            self.pending.append(data)
        elif not self.closed:
            self.write(data)

    cdef close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # uvloop protocol callbacks
    def connection_made(self, transport):
        self.transport = transport
        self.write = transport.write
        pending = self.pending
        self.pending = None
        if self.closed:               # its client went away and closed it while it connected
            transport.close()
        elif self.client is not None:
            if pending:
                transport.write(b"".join(pending))
        else:
            self.state = U_IDLE
            self.backend.idle.append(self)

    def data_received(self, bytes data):
        cdef const char *p
        cdef Py_ssize_t n, hend, start, used
        cdef ClientConn client = self.client
        if client is None or self.state == U_IDLE:
            self.close()              # bytes nobody asked for: the connection is out of sync
            return
        if self.state == U_CL:
            n = PyBytes_GET_SIZE(data)
            if n < self.left:
                self.left -= n
                client.write(data)
            else:
                if n > self.left:
                    self.reuse = False
                    data = data[:self.left]
                client.write(data)
                self.left = 0
                self.finish()
        elif self.state == U_HEAD:
            if self.inbuf.len == 0:
                p = PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
                hend = find_head_end(p, n, 0)
                if hend == -1:
                    if n > MAX_HEAD:
                        self.bad_response()
                    else:
                        buf_add(&self.inbuf, p, n)
                    return
            else:
                start = self.inbuf.len - 3 if self.inbuf.len > 3 else 0
                buf_add(&self.inbuf, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
                p = self.inbuf.data
                n = self.inbuf.len
                hend = find_head_end(p, n, start)
                if hend == -1:
                    if n > MAX_HEAD:
                        self.bad_response()
                    return
            if hend < 0 or hend > MAX_HEAD:
                self.bad_response()
            else:
                self._on_head(p, n, hend)
            self.inbuf.len = 0
        elif self.state == U_CHUNKED:
            n = PyBytes_GET_SIZE(data)
            used = self.scan_chunked(PyBytes_AS_STRING(data), n)
            if used < 0:
                self.abort()
                return
            if used < n:
                self.reuse = False
                data = data[:used]
            client.write(data)
            if self.cstate == CS_DONE:
                self.finish()
        elif self.state == U_EOF:
            client.write(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.state == U_IDLE:
            try:
                self.backend.idle.remove(self)
            except ValueError:
                pass
        client = self.client
        self.client = None
        state = self.state
        self.state = U_IDLE
        if client is not None:
            if state == U_EOF:        # read-until-close: the close is the end of the response
                client.response_done()
            else:
                client.upstream_failed(self.head_sent)

    def pause_writing(self):
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self):
        if self.client is not None:
            self.client.transport.resume_reading()

    # response path
    cdef int _on_head(self, const char *p, Py_ssize_t n, Py_ssize_t hend) except -1:
        cdef ClientConn client = self.client
        cdef Py_ssize_t eol, avail, take, used
        cdef int status, nh, k, kind, flags = 0, lengths = 0, transfer = 0
        cdef long long length = 0
        cdef bint up10, bodiless, done = False, extra = False, chunked = False
        cdef Hdr *h
        cdef const char *q
        global g_ntok
        # status line: HTTP/1.x SP 3DIGIT [SP reason] CRLF
        if (hend < 16 or memcmp(p, b"HTTP/1.", 7) != 0 or (p[7] != b'0' and p[7] != b'1')
                or p[8] != b' ' or not (b'1' <= p[9] <= b'5') or not (b'0' <= p[10] <= b'9')
                or not (b'0' <= p[11] <= b'9') or (p[12] != b' ' and p[12] != b'\r')):
            return self.bad_response()
        status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
        if status < 200:
            return self.bad_response()
        up10 = p[7] == b'0'
        q = <const char *>memchr(p, b'\n', hend)
        eol = q - p + 1
        nh = parse_headers(p, eol, hend)
        if nh < 0:
            return self.bad_response()
        g_ntok = 0
        for k in range(nh):
            kind = g_h[k].kind
            if kind == H_CONTENT_LENGTH:
                lengths += 1
                length = parse_length(p, g_h[k].value, g_h[k].value_len)
            elif kind == H_CONNECTION:
                if parse_connection(p, g_h[k].value, g_h[k].value_len, &flags) < 0:
                    return self.bad_response()
            elif kind == H_TRANSFER_ENCODING:
                transfer += 1
                if g_h[k].value_len != 7 or strncasecmp(p + g_h[k].value, "chunked", 7) != 0:
                    return self.bad_response()
        self.reuse = ((flags & 2) and not (flags & 1)) if up10 else not (flags & 1)
        bodiless = client.is_head or status == 204 or status == 304
        if not bodiless:
            if transfer:
                if transfer > 1 or lengths or up10:
                    return self.bad_response()
                chunked = True
                self.cstate = CS_SIZE
                self.csize = 0
                self.cdigits = 0
            elif lengths:
                if lengths > 1 or length < 0:
                    return self.bad_response()
            else:                     # read until close
                self.reuse = False
                client.keep_alive = False
        # client head
        g_out.len = 0
        buf_addb(&g_out, S_HTTP11)
        buf_add(&g_out, p + 8, eol - 8)
        for k in range(nh):
            h = &g_h[k]
            kind = h.kind
            if (kind == H_OTHER or kind == H_CONTENT_LENGTH or kind == H_TRANSFER_ENCODING
                    or kind == H_HOST or kind == H_XFF or kind == H_XFP
                    or kind == H_PROXY_AUTHORIZATION):
                if g_ntok and kind == H_OTHER and named_by_connection(p, h):
                    continue
                buf_add(&g_out, p + h.line, h.end - h.line)
        buf_addb(&g_out, S_BACKEND)
        buf_addb(&g_out, self.backend.name)
        buf_addb(&g_out, S_CRLF)
        buf_addb(&g_out, S_XRID)
        buf_add(&g_out, client.rid, client.rid_len)
        buf_addb(&g_out, S_CRLF)
        if not client.keep_alive:
            buf_addb(&g_out, S_CLOSE)
        elif client.http10:
            buf_addb(&g_out, S_KEEP)
        buf_addb(&g_out, S_CRLF)
        # body bytes of this read
        avail = n - hend
        if bodiless:
            done = True
            extra = avail > 0
        elif chunked:
            used = self.scan_chunked(p + hend, avail)
            if used < 0:
                return self.bad_response()
            buf_add(&g_out, p + hend, used)
            done = self.cstate == CS_DONE
            extra = used < avail
            self.state = U_CHUNKED
        elif lengths:
            take = length if length < avail else avail
            buf_add(&g_out, p + hend, take)
            self.left = length - take
            done = self.left == 0
            extra = avail > take
            self.state = U_CL
        else:
            buf_add(&g_out, p + hend, avail)
            self.state = U_EOF
        self.head_sent = True
        client.write(PyBytes_FromStringAndSize(g_out.data, g_out.len))
        if extra:
            self.reuse = False
        if done:
            self.finish()
        return 0

    cdef Py_ssize_t scan_chunked(self, const char *p, Py_ssize_t n):
        """Bytes of p up to the end of the chunked message (all when it does not end here);
        -1 when malformed."""
        cdef Py_ssize_t i = 0, take
        cdef int s, d
        cdef char c
        while i < n:
            s = self.cstate
            if s == CS_DATA:
                take = n - i
                if take > self.csize:
                    take = self.csize
                i += take
                self.csize -= take
                if self.csize == 0:
                    self.cstate = CS_DATA_CR
                continue
            c = p[i]
            i += 1
            if s == CS_SIZE:
                d = HEXVAL[<unsigned char>c]
                if d >= 0:
                    self.cdigits += 1
                    if self.cdigits > 15:
                        return -1
                    self.csize = self.csize * 16 + d
                elif c == b';' and self.cdigits:
                    self.cstate = CS_EXT
                elif c == b'\r' and self.cdigits:
                    self.cstate = CS_SIZE_LF
                else:
                    return -1
            elif s == CS_EXT:
                if c == b'\r':
                    self.cstate = CS_SIZE_LF
                elif c == b'\n':
                    return -1
            elif s == CS_SIZE_LF:
                if c != b'\n':
                    return -1
                self.cstate = CS_TRAILER if self.csize == 0 else CS_DATA
            elif s == CS_DATA_CR:
                if c != b'\r':
                    return -1
                self.cstate = CS_DATA_LF
            elif s == CS_DATA_LF:
                if c != b'\n':
                    return -1
                self.cstate = CS_SIZE
                self.csize = 0
                self.cdigits = 0
            elif s == CS_TRAILER:
                self.cstate = CS_END_LF if c == b'\r' else CS_TRAILER_LINE
            elif s == CS_TRAILER_LINE:
                if c == b'\r':
                    self.cstate = CS_TRAILER_LF
            elif s == CS_TRAILER_LF:
                if c != b'\n':
                    return -1
                self.cstate = CS_TRAILER
            elif s == CS_END_LF:
                if c != b'\n':
                    return -1
                self.cstate = CS_DONE
                return i
            else:
                return -1
        return i

    cdef finish(self):
        """The response is complete: the connection back to the pool (or closed), client on."""
        client = self.client
        self.client = None
        self.state = U_IDLE
        if client.state == C_BODY:      # answered before the request body was all sent
            self.reuse = False
            client.keep_alive = False
        if self.reuse and not self.closed:
            self.backend.idle.append(self)
        else:
            self.close()
        client.response_done()

    cdef int bad_response(self) except -1:
        """Malformed or unsupported response head: 502 (nothing was sent to the client yet)."""
        client = self.client
        self.client = None
        self.state = U_IDLE
        self.close()
        if client is not None:
            client.upstream_failed(False)
        return 0

    cdef abort(self):
        """Malformed body after the head went out: close both."""
        client = self.client
        self.client = None
        self.state = U_IDLE
        self.close()
        if client is not None:
            client.upstream_failed(True)

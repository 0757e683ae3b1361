# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The compiled lane: the common request path of lbd's data plane, in C (Cython on uvloop).

"C moves bytes, Python decides, anything unusual goes to Python." Started from the benchmark
prototype (bench/proxy/lane/lane.pyx); the Python side is :mod:`lbd.proxy.lane`.

Per client connection (:class:`LaneClient`), per request:

* the head is parsed in C, a strict subset (an HTTP/1.1 request of a common method with an
  origin-form target, token field names, no control characters, one Host, at most one
  Content-Length of digits, Connection naming only close/keep-alive, well inside the
  configured head limits). Anything else, and every field the Python path acts on besides
  the forwarding ones (Transfer-Encoding, Expect, Upgrade, Prefer, x-lbd-timeout-ms,
  Proxy-Connection, several X-Forwarded-For or X-Request-ID fields), HANDS THE CONNECTION
  OVER: a Python ``ClientConnection`` takes the transport and is fed every byte the lane
  buffered; the connection stays Python from then on.
* llhttp reads every byte it is given, and the Python path's answer to a request depends on
  what is pipelined behind it (a refusal there closes the connection after it). So the
  requests buffered behind one are checked before it goes upstream, and the connection is
  handed over first when one is not the lane's (or anything follows ``Connection: close``).
  A request whose body is still to come is routed first (``glue.routable``): Python answers
  at the head what it refuses there (404, 401, 429), the lane would wait for the body.
  (tests/unit/proxy/test_lane_parse.py and tests/integration/proxy/test_lane_fuzz.py hold
  the lane to llhttp and to the Python path.)
* the upstream head is built in C exactly as ``lbd.proxy.heads.request_head`` builds it.
* once the whole body is in (at most 64 KiB, kept for a replay), one Python call
  (``glue.begin``) routes and picks, or says "hand over".
* the response head is parsed in C and built exactly as ``Exchange.on_response_head`` builds
  it; a body without a length is chunked per read as the Python path does, a chunked one
  decoded and re-chunked per span (what llhttp's on_body calls and ``chunk()`` make).
* one Python call at the end (``glue.done``) closes the books (the attempt, metrics, the
  access log); a response that does not end in the read that brought its head closes the
  attempt at the head (``glue.head``), as the Python path does.
* a failure before the response head reached the client: ``glue.failed`` accounts the try and
  hands the connection over with the kept request, so the Python exchange makes the retries.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove
from libc.stdio cimport snprintf

cdef extern from "strings.h":
    int strncasecmp(const char *a, const char *b, size_t n)

cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_REALTIME
    int CLOCK_MONOTONIC


DEF MAX_HEADERS = 128
DEF MAX_TOKENS = 16
DEF HARD_HEAD = 65536          # the C side never buffers a head larger than this
DEF REPLAY_LIMIT = 65536       # lbd.proxy.request.REPLAY_LIMIT
DEF PIPELINE_LIMIT = 262144    # bytes buffered behind a request before reading pauses

# field kinds (lbd.proxy.http.FIELDS, plus the ones the lane hands over for)
DEF H_OTHER = 0
DEF H_HOP = 1                  # keep-alive, te, trailer, proxy-authenticate/-authorization
DEF H_CONNECTION = 2
DEF H_TRANSFER_ENCODING = 3
DEF H_CONTENT_LENGTH = 4
DEF H_HOST = 5
DEF H_XFF = 6
DEF H_XRID = 7
DEF H_EXPECT = 8
DEF H_TIMEOUT = 9
DEF H_RETRY_AFTER = 10
DEF H_PREFER = 11
DEF H_UPGRADE = 12
DEF H_PROXY_CONNECTION = 13    # llhttp reads it as Connection (close, keep-alive); a hop-by-hop field

# client states
DEF C_HEAD = 0       # waiting for (the rest of) a request head
DEF C_BODY = 1       # the body is still arriving
DEF C_WAIT = 2       # with Python (begin) or upstream, waiting for the response to end
DEF C_GONE = 3       # closed, or handed over to Python

# upstream states
DEF U_IDLE = 0
DEF U_CONNECTING = 1
DEF U_HEAD = 2
DEF U_CL = 3
DEF U_CHUNKED = 4
DEF U_EOF = 5

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


cdef inline void buf_consume(Buf *b, Py_ssize_t n):
    if n >= b.len:
        b.len = 0
    else:
        memmove(b.data, b.data + n, b.len - n)
        b.len -= n


cdef Buf g_out          # scratch for a head being built (single-threaded, used synchronously)
cdef Buf g_log          # scratch for an access line


cdef inline double clock_now(int clk):
    cdef timespec t
    clock_gettime(clk, &t)
    return t.tv_sec + t.tv_nsec * 1e-9


cdef int buf_json(Buf *b, const char *s, Py_ssize_t n) except -1:
    """UTF-8 (or ASCII) ``s`` as a JSON string: quote and backslash escaped, control bytes as
    \\u00XX, the rest as is. (The ids, paths and methods the lane serves are ASCII: its
    request heads carry no obs-text.)"""
    cdef Py_ssize_t i, run = 0
    cdef unsigned char c
    cdef char esc[8]
    buf_add(b, '"', 1)
    for i in range(n):
        c = <unsigned char>s[i]
        if c >= 0x20 and c != 34 and c != 92:
            continue
        if i > run:
            buf_add(b, s + run, i - run)
        run = i + 1
        if c == 34 or c == 92:
            esc[0] = 92
            esc[1] = <char>c
            buf_add(b, esc, 2)
        else:
            snprintf(esc, 8, "\\u%04x", c)
            buf_add(b, esc, 6)
    if n > run:
        buf_add(b, s + run, n - run)
    buf_add(b, '"', 1)
    return 0


cdef int buf_milli(Buf *b, double x) except -1:
    """``x`` as orjson writes ``round(x, 3)``: ``12.3``, ``0.125``, ``7.0`` (x >= 0)."""
    cdef char tmp[32]
    cdef int n = 0, k
    cdef long long v = <long long>(x * 1000.0 + 0.5) if x > 0 else 0
    cdef long long whole = v // 1000
    cdef int frac = <int>(v % 1000)
    k = 31
    while True:
        tmp[k] = <char>(48 + whole % 10)
        whole //= 10
        k -= 1
        if whole == 0:
            break
    buf_add(b, tmp + k + 1, 31 - k)
    tmp[0] = b'.'
    tmp[1] = <char>(48 + frac // 100)
    tmp[2] = <char>(48 + frac // 10 % 10)
    tmp[3] = <char>(48 + frac % 10)
    n = 4
    while n > 2 and tmp[n - 1] == b'0':
        n -= 1
    return buf_add(b, tmp, n)


cdef bytes L_TS = b'{"ts":'
cdef bytes L_RID = b',"type":"access","request_id":'
cdef bytes L_CLIENT = b',"client":'
cdef bytes L_METHOD = b',"method":'
cdef bytes L_PATH = b',"path":'
cdef bytes L_BACKEND = b',"backend":'
cdef bytes L_END = b',"attempts":1,"cache":null,"tenant":null,"duration_ms":'


cdef bytes access_line(bytes rid, bytes client, bytes method, bytes target, int status, bytes pool,
                       bytes backend, double duration):
    """The access log's line for a request the lane served in one try, the fields and their
    order as ``lbd.log.AccessLog`` writes them (``ts`` when the response ended)."""
    cdef char num[128]
    cdef Py_ssize_t n
    cdef const char *t = PyBytes_AS_STRING(target)
    cdef const char *q = <const char *>memchr(t, b'?', PyBytes_GET_SIZE(target))
    g_log.len = 0
    buf_addb(&g_log, L_TS)
    buf_milli(&g_log, clock_now(CLOCK_REALTIME))
    buf_addb(&g_log, L_RID)
    buf_json(&g_log, PyBytes_AS_STRING(rid), PyBytes_GET_SIZE(rid))
    buf_addb(&g_log, L_CLIENT)
    buf_json(&g_log, PyBytes_AS_STRING(client), PyBytes_GET_SIZE(client))
    buf_addb(&g_log, L_METHOD)
    buf_json(&g_log, PyBytes_AS_STRING(method), PyBytes_GET_SIZE(method))
    buf_addb(&g_log, L_PATH)
    buf_json(&g_log, t, (q - t) if q != NULL else PyBytes_GET_SIZE(target))
    n = snprintf(num, 128, ',"status":%d,"pool":', status)
    buf_add(&g_log, num, n)
    buf_json(&g_log, PyBytes_AS_STRING(pool), PyBytes_GET_SIZE(pool))
    buf_addb(&g_log, L_BACKEND)
    buf_json(&g_log, PyBytes_AS_STRING(backend), PyBytes_GET_SIZE(backend))
    buf_addb(&g_log, L_END)
    buf_milli(&g_log, duration * 1e3)
    buf_add(&g_log, "}\n", 2)
    return PyBytes_FromStringAndSize(g_log.data, g_log.len)


# --------------------------------------------------------------------------- character classes

cdef unsigned char TCHAR[256]
cdef unsigned char UCHAR[256]    # request-target characters the lane accepts
cdef int HEXVAL[256]


cdef void _init_tables():
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        UCHAR[c] = 0
        HEXVAL[c] = -1
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        TCHAR[c] = 1
    for c in b"-._~!$&'()*+,;=:@/?%0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        UCHAR[c] = 1
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
    Py_ssize_t value         # the value without leading OWS (llhttp keeps trailing OWS)
    Py_ssize_t value_len
    int kind

cdef Hdr g_h[MAX_HEADERS]
cdef Py_ssize_t g_tok[MAX_TOKENS]
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
        if strncasecmp(s, "te", 2) == 0: return H_HOP
    elif n == 4:
        if strncasecmp(s, "host", 4) == 0: return H_HOST
    elif n == 6:
        if strncasecmp(s, "expect", 6) == 0: return H_EXPECT
        if strncasecmp(s, "prefer", 6) == 0: return H_PREFER
    elif n == 7:
        if strncasecmp(s, "trailer", 7) == 0: return H_HOP
        if strncasecmp(s, "upgrade", 7) == 0: return H_UPGRADE
    elif n == 10:
        if strncasecmp(s, "connection", 10) == 0: return H_CONNECTION
        if strncasecmp(s, "keep-alive", 10) == 0: return H_HOP
    elif n == 11:
        if strncasecmp(s, "retry-after", 11) == 0: return H_RETRY_AFTER
    elif n == 12:
        if strncasecmp(s, "x-request-id", 12) == 0: return H_XRID
    elif n == 14:
        if strncasecmp(s, "content-length", 14) == 0: return H_CONTENT_LENGTH
    elif n == 15:
        if strncasecmp(s, "x-forwarded-for", 15) == 0: return H_XFF
    elif n == 16:
        if strncasecmp(s, "proxy-connection", 16) == 0: return H_PROXY_CONNECTION
        if strncasecmp(s, "x-lbd-timeout-ms", 16) == 0: return H_TIMEOUT
    elif n == 17:
        if strncasecmp(s, "transfer-encoding", 17) == 0: return H_TRANSFER_ENCODING
    elif n == 18:
        if strncasecmp(s, "proxy-authenticate", 18) == 0: return H_HOP
    elif n == 19:
        if strncasecmp(s, "proxy-authorization", 19) == 0: return H_HOP
    return H_OTHER


cdef int parse_headers(const char *p, Py_ssize_t i, Py_ssize_t hend, bint strict):
    """Fill g_h from the field lines in p[i:hend] (hend just past CRLFCRLF): their count, or
    -1 outside the subset (strict: no obs-text either, for requests)."""
    cdef int n = 0
    cdef Py_ssize_t s, v
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
            if (c < 32 and c != 9) or c == 127 or (strict and c > 127):
                return -1
            i += 1
        if p[i + 1] != b'\n':                # bare CR
            return -1
        g_h[n].value = v
        g_h[n].value_len = i - v
        i += 2
        g_h[n].kind = classify(p + s, g_h[n].name_len)
        n += 1
    return n


cdef int connection_tokens(const char *p, Py_ssize_t v, Py_ssize_t vlen, int *flags):
    """``lbd.proxy.http.connection_tokens``: sets flags (1 close, 2 keep-alive) and puts the
    other comma-separated tokens (stripped) in g_tok; -1 when there are too many."""
    cdef Py_ssize_t i = v, end = v + vlen, s, e
    global g_ntok
    g_ntok = 0
    while i <= end:
        s = i
        while i < end and p[i] != b',':
            i += 1
        e = i
        i += 1
        while s < e and (p[s] == b' ' or p[s] == b'\t' or p[s] == b'\r' or p[s] == b'\n'):
            s += 1
        while e > s and (p[e - 1] == b' ' or p[e - 1] == b'\t'):
            e -= 1
        if e == s:
            continue
        if e - s == 5 and strncasecmp(p + s, "close", 5) == 0:
            flags[0] |= 1
        elif e - s == 10 and strncasecmp(p + s, "keep-alive", 10) == 0:
            flags[0] |= 2
        else:
            if g_ntok == MAX_TOKENS:
                return -1
            g_tok[g_ntok] = s
            g_tok_len[g_ntok] = e - s
            g_ntok += 1
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


cdef inline void add_field(Buf *b, const char *p, Hdr *h) except *:
    """``name: value\\r\\n`` as the Python path writes it (one space, trailing OWS kept)."""
    buf_add(b, p + h.line, h.name_len)
    buf_add(b, ": ", 2)
    buf_add(b, p + h.value, h.value_len)
    buf_add(b, "\r\n", 2)


cdef bint known_method(const char *p, Py_ssize_t n):
    if n == 3:
        return memcmp(p, b"GET", 3) == 0 or memcmp(p, b"PUT", 3) == 0
    if n == 4:
        return memcmp(p, b"POST", 4) == 0 or memcmp(p, b"HEAD", 4) == 0
    if n == 5:
        return memcmp(p, b"PATCH", 5) == 0
    if n == 6:
        return memcmp(p, b"DELETE", 6) == 0
    if n == 7:
        return memcmp(p, b"OPTIONS", 7) == 0
    return False


cdef bint known_method_prefix(const char *p, Py_ssize_t n):
    """Is ``p[:n]`` (a run of tchars) the start of a method the lane serves?"""
    cdef const char *m
    for m in (b"GET", b"PUT", b"POST", b"HEAD", b"PATCH", b"DELETE", b"OPTIONS"):
        if <Py_ssize_t>len(m) >= n and memcmp(p, m, n) == 0:
            return True
    return False


cdef struct Head:
    Py_ssize_t m              # the method's length
    Py_ssize_t target_end
    int nh                    # fields, in g_h
    int flags                 # Connection: 1 close, 2 keep-alive
    int xrid                  # the X-Request-ID field's index, or -1
    int xff                   # the X-Forwarded-For field's index, or -1
    long long length          # Content-Length, 0 without


cdef int check_head(const char *p, Py_ssize_t hend, Py_ssize_t max_url, Py_ssize_t max_headers, long long max_body,
                    Head *r):
    """Is the whole request head ``p[:hend]`` one the lane serves (with the client limits)?
    0 (its fields in g_h, the rest in ``r``), or -1: Python's."""
    cdef Py_ssize_t i = 0, v
    cdef int nh, k, kind, flags = 0, hosts = 0, xrid = -1, xff = -1, lengths = 0, conns = 0
    cdef long long length = 0
    # request line: METHOD SP /target SP HTTP/1.1 CRLF
    while TCHAR[<unsigned char>p[i]]:
        i += 1
    r.m = i
    if not known_method(p, i) or p[i] != b' ':
        return -1
    i += 1
    if p[i] != b'/':
        return -1
    while UCHAR[<unsigned char>p[i]]:
        i += 1
    if p[i] != b' ' or i - r.m - 1 > max_url:
        return -1
    r.target_end = i
    i += 1
    if i + 10 > hend or memcmp(p + i, b"HTTP/1.1\r\n", 10) != 0:
        return -1      # HTTP/1.0 and everything else: Python
    nh = parse_headers(p, i + 10, hend, True)
    if nh < 0 or nh > max_headers:
        return -1
    for k in range(nh):
        kind = g_h[k].kind
        if kind == H_OTHER or kind == H_HOP or kind == H_RETRY_AFTER:
            continue
        if kind == H_CONTENT_LENGTH:
            lengths += 1
            length = parse_length(p, g_h[k].value, g_h[k].value_len)
        elif kind == H_HOST:
            hosts += 1
        elif kind == H_CONNECTION:
            conns += 1
            v = g_h[k].value
            if (memchr(p + v, b'\t', g_h[k].value_len) != NULL   # llhttp versions differ on tabs
                    or connection_tokens(p, v, g_h[k].value_len, &flags) < 0 or g_ntok):
                return -1
        elif kind == H_XRID:
            if xrid >= 0:
                return -1
            xrid = k
        elif kind == H_XFF:
            if xff >= 0:
                return -1
            xff = k
        else:   # Transfer-Encoding, Expect, Upgrade, Prefer, x-lbd-timeout-ms, Proxy-Connection
            return -1
    if lengths > 1 or length < 0 or hosts != 1 or conns > 1:
        return -1
    if length > REPLAY_LIMIT or (max_body and length > max_body):
        return -1
    r.nh = nh
    r.flags = flags
    r.xrid = xrid
    r.xff = xff
    r.length = length
    return 0


cdef bint head_prefix_ok(const char *p, Py_ssize_t n, Py_ssize_t max_url, Py_ssize_t max_headers):
    """May the incomplete head ``p[:n]`` (no CRLFCRLF, no bare LF in it) still become one the
    lane serves? A look at the request line and the field lines so far (llhttp and the
    Python path's limits refuse a head before it is whole), no more."""
    cdef Py_ssize_t i = 0, s, k, m, lines = 0
    cdef unsigned char c
    while i < n and TCHAR[<unsigned char>p[i]]:
        i += 1
    if i == n:
        return known_method_prefix(p, n)
    if not known_method(p, i) or p[i] != b' ':
        return False
    m = i
    i += 1
    if i == n:
        return True
    if p[i] != b'/':
        return False
    while i < n and UCHAR[<unsigned char>p[i]]:
        i += 1
    if i - m - 1 > max_url:
        return False
    if i == n:
        return True
    if p[i] != b' ':
        return False
    i += 1
    k = n - i if n - i < 10 else 10
    if memcmp(p + i, b"HTTP/1.1\r\n", k) != 0:
        return False
    i += 10
    while i < n:              # field lines: name, colon, value chars, CRLF
        s = i
        while i < n and TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == n:
            return True
        if i == s:
            return p[i] == b'\r' and i + 1 == n      # the blank line's CR
        if p[i] != b':':
            return False
        i += 1
        while i < n and p[i] != b'\r':
            c = <unsigned char>p[i]
            if (c < 32 and c != 9) or c >= 127:
                return False
            i += 1
        i += 2                # CRLF (a bare CR or LF: find_head_end or the next round says)
        if i - 1 < n and p[i - 1] != b'\n':
            return False
        if i <= n:
            lines += 1
            if lines > max_headers:
                return False
    return True


def read_head(bytes data, Py_ssize_t max_head=65536, Py_ssize_t max_url=8192, Py_ssize_t max_headers=100,
              long long max_body=0):
    """How the lane reads the request at the start of ``data`` (for tests: the lane against
    llhttp): ``None`` when it hands the connection over; ``"more"`` when it waits for more
    bytes (the head is not whole); else ``(method, target, fields, keep_alive, end)``, the
    fields as ``(name, value)`` and ``end`` where the request (head and body) ends in data."""
    cdef const char *p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t hend = find_head_end(p, n, 0)
    cdef Head r
    cdef int k
    if hend == -1:
        return None if n > max_head or n > HARD_HEAD else "more"
    if hend < 0 or hend > max_head:
        return None
    if check_head(p, hend, max_url, max_headers, max_body, &r) < 0:
        return None
    fields = [(PyBytes_FromStringAndSize(p + g_h[k].line, g_h[k].name_len),
               PyBytes_FromStringAndSize(p + g_h[k].value, g_h[k].value_len)) for k in range(r.nh)]
    return (PyBytes_FromStringAndSize(p, r.m), PyBytes_FromStringAndSize(p + r.m + 1, r.target_end - r.m - 1),
            fields, not (r.flags & 1), hend + r.length)


cdef Py_ssize_t pipelined_check(const char *p, Py_ssize_t n, Py_ssize_t max_head, Py_ssize_t max_url,
                                Py_ssize_t max_headers, long long max_body):
    """The ``n`` bytes buffered behind a request about to go upstream, as llhttp reads them
    at once: -1 when a request in them is not one the lane serves (nor the start of one that
    may be), or bytes follow a ``Connection: close`` request; else how many bytes the whole
    requests in them take (what follows is the start of one that may still be served)."""
    cdef Py_ssize_t i = 0, hend, end
    cdef Head r
    while i < n:
        hend = find_head_end(p + i, n - i, 0)
        if hend == -1:
            return i if n - i <= max_head and head_prefix_ok(p + i, n - i, max_url, max_headers) else -1
        if hend < 0 or hend > max_head or check_head(p + i, hend, max_url, max_headers, max_body, &r) < 0:
            return -1
        end = i + hend + r.length
        if end > n:
            return i          # its body is still arriving
        if (r.flags & 1) and end < n:
            return -1         # llhttp: "Data after Connection: close"
        i = end
    return i


def next_ok(bytes data, Py_ssize_t max_head=65536, Py_ssize_t max_url=8192, Py_ssize_t max_headers=100,
            long long max_body=0):
    """For tests: may ``data``, buffered behind a request about to go upstream, be requests
    the lane serves, and the start of one? (Otherwise the lane hands over first.)"""
    return pipelined_check(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), max_head, max_url, max_headers,
                           max_body) >= 0


cdef bytes S_XFF = b"x-forwarded-for: "
cdef bytes S_XFP = b"\r\nx-forwarded-proto: http\r\nx-request-id: "
cdef bytes S_BACKEND = b"x-lbd-backend: "
cdef bytes S_POOL = b"\r\nx-lbd-pool: "
cdef bytes S_XRID = b"x-request-id: "
cdef bytes S_CHUNKED = b"transfer-encoding: chunked\r\n"
cdef bytes S_CLOSE = b"connection: close\r\n\r\n"
cdef bytes LAST_CHUNK = b"0\r\n\r\n"


# --------------------------------------------------------------------------- the lane

cdef class Lane:
    """Shared state: the loop, the Python glue (``lbd.proxy.lane.Glue``), the client limits."""
    cdef public object loop, glue
    cdef object _time, _call_at
    cdef public Py_ssize_t max_head, max_headers, max_url
    cdef public long long max_body
    cdef public bint access_log     # the lane formats its own access lines (lbd.log.AccessLog)
    cdef list status_lines          # index status - 100 -> b"HTTP/1.1 200 OK\r\n"

    def __init__(self, loop, glue, status_lines):
        self.loop = loop
        self.glue = glue
        self._time = loop.time
        self._call_at = loop.call_at
        self.status_lines = list(status_lines)
        self.max_head = 65536
        self.max_headers = 100
        self.max_url = 8192
        self.max_body = 0

    def configure(self, Py_ssize_t max_head, Py_ssize_t max_headers, Py_ssize_t max_url, long long max_body,
                  bint access_log):
        """The client limits (``ClientLimitsConfig``) and ``log.access``, on start and on
        every reload."""
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_url = max_url
        self.max_body = max_body
        self.access_log = access_log

    def protocol(self):
        """Protocol factory for loop.create_server."""
        return LaneClient(self)

    def upstream(self, backend, list idle, bytes name):
        return LaneUpstream(self, backend, idle, name)


# --------------------------------------------------------------------------- client side

cdef class LaneClient:
    cdef Lane lane
    cdef public object transport, client_ip, internal, req
    cdef public double head_started, last_active
    cdef object _write
    cdef bytes ip
    cdef LaneUpstream up
    cdef Buf inbuf
    cdef int state
    cdef Py_ssize_t need              # head + body bytes of the request being read
    cdef Py_ssize_t checked           # inbuf up to here: whole requests the lane serves (pipelined_check)
    cdef bint _keep_alive, is_head, read_paused, write_paused, closing
    cdef object timer, timer_cb, pending
    # the request in flight
    cdef bytes kept                   # head and body as the client sent them (for a handover)
    cdef bytes upstream_head          # head to send upstream, with its body
    cdef bytes rid, pool_name, method, target, backend_name
    cdef double per_try, deadline, t_start
    cdef double expires, timer_at     # the try's timeout (0: none running); when the handle fires
    cdef int status

    def __cinit__(self, Lane lane):
        self.lane = lane
        self.state = C_HEAD
        self.internal = None

    def __dealloc__(self):
        free(self.inbuf.data)

    # -- what ProxyServer reads of a connection (admission, the janitor, drain) -----------
    @property
    def current(self):
        return self if self.state == C_BODY or self.state == C_WAIT else None

    @property
    def receiving(self):
        return self if self.state == C_BODY else None

    @property
    def keep_alive(self):
        return self._keep_alive

    @keep_alive.setter
    def keep_alive(self, value):
        self._keep_alive = bool(value)

    @property
    def closing_reason(self):
        return None

    def idle_for(self, double now):
        if self.state != C_HEAD or self.head_started:
            return 0.0
        return now - self.last_active

    def body_stalled_for(self, double now):
        if self.state != C_BODY or self.read_paused:
            return 0.0
        return now - self.last_active

    def reject_stalled(self, int status, str code, str message):
        self.lane.glue.refuse(self, status, code, message)

    def closing_after_current(self):
        self._keep_alive = False

    def close_now(self):
        if not self.closing:
            self.closing = True
            self.transport.close()

    def write(self, bytes data):
        if not self.closing:
            self.transport.write(data)

    # -- uvloop protocol callbacks -------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self._write = transport.write
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unix"
        self.ip = self.client_ip.encode()
        self.timer_cb = self._on_timer
        self.last_active = self.lane._time()
        if not self.lane.glue.admit(self):
            self.closing = True
            self.state = C_GONE
            transport.abort()

    def data_received(self, bytes data):
        if self.state == C_GONE or self.closing:
            return
        self.last_active = self.lane._time()
        if self.inbuf.len == 0 and self.state == C_HEAD:
            self.head_started = self.last_active
        buf_add(&self.inbuf, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if self.state == C_HEAD:
            self._on_bytes()
        elif self.state == C_BODY:
            if self.inbuf.len >= self.need:
                self._request_whole()
        elif self.state == C_WAIT:
            if self.inbuf.len > self.need + PIPELINE_LIMIT and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()

    def eof_received(self):
        return None   # as the Python path: a client that closes its side has gone away

    def connection_lost(self, exc):
        self.closing = True
        was = self.state
        self.state = C_GONE
        self._cancel_timer()
        glue = self.lane.glue
        glue.release(self)
        up = self.up
        self.up = None
        if up is not None:            # client gone mid-request: the upstream cannot be reused
            up.client = None
            up.close()
        req = self.req
        self.req = None
        if req is not None:
            glue.abandon(req)

    def pause_writing(self):
        self.write_paused = True
        if self.up is not None:
            self.up.pause()

    def resume_writing(self):
        self.write_paused = False
        if self.up is not None:
            self.up.resume()

    # -- the request -------------------------------------------------------------------
    cdef int _on_bytes(self) except -1:
        """Bytes of a head are buffered: parse it when it is whole."""
        cdef const char *p = self.inbuf.data
        cdef Py_ssize_t n = self.inbuf.len
        cdef Py_ssize_t hend = find_head_end(p, n, 0)
        if hend == -1:
            if n > self.lane.max_head or n > HARD_HEAD:
                self._handover()          # near the limits: Python answers 431/414 exactly
            return 0
        if hend < 0 or hend > self.lane.max_head:
            self._handover()
            return 0
        self.head_started = 0.0
        self._on_head(p, hend)
        return 0

    cdef int _on_head(self, const char *p, Py_ssize_t hend) except -1:
        cdef Head r
        cdef int nh, k, kind, xrid, xff
        cdef long long length
        cdef Hdr *h
        cdef Lane lane = self.lane
        if check_head(p, hend, lane.max_url, lane.max_headers, lane.max_body, &r) < 0:
            return self._handover()
        nh = r.nh
        xrid = r.xrid
        xff = r.xff
        length = r.length
        self.is_head = r.m == 4 and memcmp(p, b"HEAD", 4) == 0
        self._keep_alive = not (r.flags & 1)
        # the upstream head, as lbd.proxy.heads.request_head builds it (x-request-id last)
        g_out.len = 0
        buf_add(&g_out, p, r.target_end)
        buf_add(&g_out, " HTTP/1.1\r\n", 11)
        for k in range(nh):
            h = &g_h[k]
            kind = h.kind
            if kind == H_OTHER or kind == H_CONTENT_LENGTH or kind == H_HOST or kind == H_RETRY_AFTER:
                add_field(&g_out, p, h)
        buf_addb(&g_out, S_XFF)
        if xff >= 0 and g_h[xff].value_len:
            buf_add(&g_out, p + g_h[xff].value, g_h[xff].value_len)
            buf_add(&g_out, ", ", 2)
        buf_addb(&g_out, self.ip)
        buf_addb(&g_out, S_XFP)
        self.upstream_head = PyBytes_FromStringAndSize(g_out.data, g_out.len)
        if xrid >= 0 and g_h[xrid].value_len:
            self.rid = PyBytes_FromStringAndSize(p + g_h[xrid].value, g_h[xrid].value_len)
        else:
            self.rid = None
        self.need = hend + length
        self.state = C_BODY
        # what the Python side needs to route and pick: method, target, Host, the raw head
        method = PyBytes_FromStringAndSize(p, r.m)
        target = PyBytes_FromStringAndSize(p + r.m + 1, r.target_end - r.m - 1)
        self.pending = (method, target, hend)
        if self.inbuf.len >= self.need:
            self._request_whole()
        elif not lane.glue.routable(self, method, target, PyBytes_FromStringAndSize(p, hend), hend):
            # The body is still to come and Python would answer at the head (no route, a
            # pool the lane does not serve: 404, 401, 429 ...), not once the body is in.
            return self._handover()
        return 0

    cdef int _request_whole(self) except -1:
        """Head and body are buffered: one Python call routes and picks.

        Requests pipelined behind this one are read now, as llhttp reads every byte it is
        given: when one is not the lane's (Python would refuse it, or answer it its own way),
        or anything follows a ``Connection: close`` request, the connection goes to Python
        before this request does, for Python's answer to this one depends on them (a
        refusal behind it closes the connection after it; the requests between are dropped)."""
        cdef Lane lane = self.lane
        cdef Py_ssize_t hend
        cdef LaneUpstream up
        if self.inbuf.len > self.need and (not self._keep_alive or not self._pipelined_ok()):
            return self._handover()
        self.state = C_WAIT
        self.kept = PyBytes_FromStringAndSize(self.inbuf.data, self.need)
        method, target, hend = self.pending
        self.pending = None
        self.method = method
        self.target = target
        self.t_start = clock_now(CLOCK_MONOTONIC)
        picked = lane.glue.begin(self, method, target, self.kept, hend, self.rid)
        if picked is None:
            return self._handover()
        req, up_obj, rid, self.pool_name, self.per_try, self.deadline = picked
        self.req = req
        self.rid = rid
        self.status = 0
        body = self.kept[hend:]
        self.upstream_head = self.upstream_head + rid + b"\r\n\r\n" + body
        up = <LaneUpstream>up_obj
        self.backend_name = up.name
        self._send(up)
        return 0

    cdef int _send(self, LaneUpstream up) except -1:
        """Attach ``up`` (idle, or just made by the glue and connecting) and send."""
        self.up = up
        up.attach(self)
        if up.state != U_CONNECTING:
            up.state = U_HEAD
            up.transport.write(self.upstream_head)
            self._arm_timer()
        return 0

    cdef bint _pipelined_ok(self):
        """Are the bytes buffered behind the request requests the lane serves (and the start
        of one)? What was found so before is not read again (``checked``)."""
        cdef Lane lane = self.lane
        cdef Py_ssize_t start = self.checked if self.checked > self.need else self.need
        cdef Py_ssize_t k = pipelined_check(self.inbuf.data + start, self.inbuf.len - start, lane.max_head,
                                            lane.max_url, lane.max_headers, lane.max_body)
        if k < 0:
            return False
        self.checked = start + k
        return True

    cdef _arm_timer(self):
        """The try's timeout. One timer handle serves the connection's requests: a handle due
        before the new expiry is kept and re-armed when it fires (no handle per request)."""
        cdef double at = self.lane._time() + self.per_try
        if at > self.deadline:
            at = self.deadline
        self.expires = at
        if self.timer is not None:
            if self.timer_at <= at:
                return
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.lane._call_at(at, self.timer_cb)

    cdef inline void _disarm_timer(self):
        self.expires = 0.0     # the handle stays, for the next request's try

    cdef _cancel_timer(self):
        self.expires = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self):
        self.timer = None
        if self.expires == 0.0:
            return                 # no try running
        if self.lane._time() < self.expires:
            self.timer_at = self.expires        # a later request's try: wait for its expiry
            self.timer = self.lane._call_at(self.expires, self.timer_cb)
            return
        self.expires = 0.0
        up = self.up
        if up is None or up.head_sent:
            return
        self.up = None
        up.client = None
        up.close()
        overall = self.lane._time() >= self.deadline
        self._failed("timeout", 504, "timeout",
                     f"{'request' if overall else 'try'} timed out waiting for {up.backend.name}")

    cdef int _handover(self, carry=None) except -1:
        """Python takes the connection with every byte buffered, from now on."""
        self._cancel_timer()
        self.state = C_GONE
        self.closing = True
        data = PyBytes_FromStringAndSize(self.inbuf.data, self.inbuf.len)
        self.inbuf.len = 0
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.lane.glue.handover(self, data, carry)
        return 0

    cdef _failed(self, str failure, int status, str code, str message):
        """The try failed before any response byte reached the client: account for it in
        Python and hand the connection over with the kept request (Python retries or answers)."""
        req = self.req
        self.req = None
        self._cancel_timer()
        self.state = C_GONE
        self.closing = True
        data = PyBytes_FromStringAndSize(self.inbuf.data, self.inbuf.len)
        self.inbuf.len = 0
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.lane.glue.failed(self, req, data, failure, status, code, message)

    cdef _retry_status(self, int status, retry_after):
        req = self.req
        self.req = None
        self._cancel_timer()
        self.state = C_GONE
        self.closing = True
        data = PyBytes_FromStringAndSize(self.inbuf.data, self.inbuf.len)
        self.inbuf.len = 0
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.lane.glue.retry_handover(self, req, data)

    cdef response_done(self, bint ok):
        """The response is complete (ok) or was cut after its head went out (not ok)."""
        req = self.req
        self.req = None
        self.up = None
        self._disarm_timer()
        if self.state == C_GONE:
            self._cancel_timer()
            return
        glue = self.lane.glue
        if not ok:
            glue.aborted(req)
            self.close_now()
            return
        duration = clock_now(CLOCK_MONOTONIC) - self.t_start
        line = access_line(self.rid, self.ip, self.method, self.target, self.status, self.pool_name,
                           self.backend_name, duration) if self.lane.access_log else None
        glue.done(req, self.status, duration, line)
        if not self._keep_alive or self.closing:
            self.close_now()
            return
        buf_consume(&self.inbuf, self.need)
        self.checked = self.checked - self.need if self.checked > self.need else 0
        self.need = 0
        self.state = C_HEAD
        self.kept = None
        self.upstream_head = None
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if self.inbuf.len:
            self.head_started = self.lane._time()
            self._on_bytes()


# --------------------------------------------------------------------------- upstream side

cdef class LaneUpstream:
    cdef Lane lane
    cdef public object backend, transport
    cdef list idle
    cdef bytes name
    cdef LaneClient client
    cdef Buf inbuf
    cdef int state
    cdef long long left
    cdef int cstate
    cdef long long csize
    cdef int cdigits
    cdef bint reuse, head_sent, chunk_out, paused
    cdef public bint closed
    cdef public int uses
    cdef bint received
    cdef public double idle_since

    def __cinit__(self, Lane lane, backend, list idle, bytes name):
        self.lane = lane
        self.backend = backend
        self.idle = idle
        self.name = name
        self.state = U_CONNECTING

    def __dealloc__(self):
        free(self.inbuf.data)

    def __call__(self):
        return self      # its own protocol factory

    cdef attach(self, LaneClient client):
        self.client = client
        self.head_sent = False
        self.received = False
        self.inbuf.len = 0
        self.uses += 1

    def close(self):
        if not self.closed:
            self.closed = True
            self.client = None
            if self.transport is not None:
                self.transport.abort()

    cdef pause(self):
        if not self.paused and not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    cdef resume(self):
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def connect_failed(self, str failure, int status, str code, str message):
        """The glue's connect task failed (words as the Python path's)."""
        cdef LaneClient client = self.client
        self.closed = True
        self.client = None
        if client is not None and client.up is self:
            client.up = None
            client._failed(failure, status, code, message)

    # -- uvloop protocol callbacks -------------------------------------------------------
    def connection_made(self, transport):
        """Only the transport: nothing goes out before ``loop.create_connection`` has returned
        this connection (:meth:`connected`), as the Python path attaches a connection only
        then. uvloop calls this before create_connection returns; when ``wait_for``'s connect
        timeout lands in between, it closes the transport behind the protocol's back (no
        connection_lost) and the glue books a connect failure. A request sent from here was
        then answered on a connection booked as failed, or sent again as never sent, and the
        connection, back in the idle list with its transport closed, made the next request's
        write raise (the client's connection was dropped)."""
        self.transport = transport
        if self.closed:
            transport.abort()

    def connected(self):
        """``loop.create_connection`` returned this connection (the glue's connect task):
        send the request of the client waiting for it, if it still is."""
        cdef LaneClient client = self.client
        if self.closed:
            return
        if client is not None and client.up is self:
            self.state = U_HEAD
            self.transport.write(client.upstream_head)
            client._arm_timer()
        else:
            self.close()

    def data_received(self, bytes data):
        cdef LaneClient client = self.client
        cdef Py_ssize_t n
        self.received = True
        if client is None or self.state == U_IDLE or self.state == U_CONNECTING:
            self.close()              # bytes nobody asked for: the connection is out of sync
            return
        if self.state == U_HEAD:
            buf_add(&self.inbuf, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            self._on_head_bytes()
        elif self.state == U_CL:
            n = PyBytes_GET_SIZE(data)
            if n < self.left:
                self.left -= n
                client._write(data)
            else:
                if n > self.left:
                    self.reuse = False
                    data = data[:self.left]
                client._write(data)
                self.left = 0
                self.finish()
        elif self.state == U_CHUNKED:
            g_out.len = 0
            if self.rechunk(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) < 0:
                self.abort()
                return
            if g_out.len:
                client._write(PyBytes_FromStringAndSize(g_out.data, g_out.len))
            if self.cstate == CS_DONE:
                self.finish()
        elif self.state == U_EOF:
            g_out.len = 0
            self.chunk_bytes(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            client._write(PyBytes_FromStringAndSize(g_out.data, g_out.len))

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        cdef LaneClient client = self.client
        self.closed = True
        state = self.state
        self.state = U_IDLE
        self.client = None
        if client is None:
            try:
                self.idle.remove(self)
            except ValueError:
                pass
            return
        if client.up is not self:
            return
        client.up = None
        if self.head_sent:
            client.response_done(False)     # the head is out: closing is the only signal left
        elif self.uses > 1 and not self.received:
            # A pooled connection the backend had closed while it sat idle: the request never
            # reached it. Send it again on a fresh connection to the same backend.
            client._cancel_timer()
            fresh = self.lane.glue.reconnect(client.req, self)
            client._send(<LaneUpstream>fresh)
        else:
            reason = f"backend {self.backend.name} closed the connection" + (f": {exc}" if exc else "")
            client._failed("reset", 502, "upstream_reset", reason)

    def pause_writing(self):
        if self.client is not None and not self.client.closing:
            self.client.transport.pause_reading()

    def resume_writing(self):
        if self.client is not None and not self.client.closing:
            self.client.transport.resume_reading()

    # -- the response ------------------------------------------------------------------
    cdef int _on_head_bytes(self) except -1:
        cdef const char *p
        cdef Py_ssize_t n, hend
        cdef int status
        while True:
            p = self.inbuf.data
            n = self.inbuf.len
            hend = find_head_end(p, n, 0)
            if hend == -1:
                if n > HARD_HEAD:
                    return self.bad_response("response head too large")
                return 0
            if hend < 0:
                return self.bad_response("bare LF in the response head")
            if (hend < 16 or memcmp(p, b"HTTP/1.", 7) != 0 or (p[7] != b'0' and p[7] != b'1')
                    or p[8] != b' ' or not (b'1' <= p[9] <= b'5') or not (b'0' <= p[10] <= b'9')
                    or not (b'0' <= p[11] <= b'9') or (p[12] != b' ' and p[12] != b'\r')):
                return self.bad_response("bad status line")
            status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
            if status < 200:
                if status == 101:
                    return self.bad_response("unexpected 101")
                buf_consume(&self.inbuf, hend)     # an interim answer (100 Continue): skipped
                continue
            return self._on_head(p, n, hend, status)

    cdef int _on_head(self, const char *p, Py_ssize_t n, Py_ssize_t hend, int status) except -1:
        cdef LaneClient client = self.client
        cdef Py_ssize_t eol, avail, take
        cdef int nh, k, kind, flags = 0, lengths = 0, transfer = 0, last_conn = -1
        cdef long long length = 0
        cdef bint up10, bodiless, done = False, has_length = False, rid_seen = False, broken = False
        cdef Hdr *h
        cdef const char *q
        cdef Lane lane = self.lane
        up10 = p[7] == b'0'
        q = <const char *>memchr(p, b'\n', hend)
        eol = q - p + 1
        nh = parse_headers(p, eol, hend, False)
        if nh < 0:
            return self.bad_response("malformed response head")
        retry_after = None
        for k in range(nh):
            kind = g_h[k].kind
            if kind == H_CONTENT_LENGTH:
                lengths += 1
                has_length = True
                length = parse_length(p, g_h[k].value, g_h[k].value_len)
            elif kind == H_CONNECTION:
                last_conn = k
                if connection_tokens(p, g_h[k].value, g_h[k].value_len, &flags) < 0:
                    return self.bad_response("Connection field")
            elif kind == H_PROXY_CONNECTION:       # dropped, but its close counts (llhttp)
                connection_tokens(p, g_h[k].value, g_h[k].value_len, &flags)
            elif kind == H_TRANSFER_ENCODING:
                transfer += 1
                if g_h[k].value_len != 7 or strncasecmp(p + g_h[k].value, "chunked", 7) != 0:
                    return self.bad_response("transfer coding")
            elif kind == H_XRID:
                rid_seen = True
            elif kind == H_RETRY_AFTER:
                retry_after = PyBytes_FromStringAndSize(p + g_h[k].value, g_h[k].value_len)
        if lengths > 1 or length < 0 or (transfer and lengths) or transfer > 1:
            return self.bad_response("framing")
        if (status >= 500 or status == 429):
            # Python decides: account the try, and retry (hand over) or forward the answer.
            if lane.glue.status(client.req, status, retry_after):
                self.client = None
                client.up = None
                self.close()
                client._retry_status(status, retry_after)
                return 0
            if self.client is not client or client.state == C_GONE:
                return 0
        self.reuse = ((flags & 2) and not (flags & 1)) if up10 else not (flags & 1)
        bodiless = client.is_head or status == 204 or status == 304
        if not bodiless:
            if transfer:
                self.cstate = CS_SIZE
                self.csize = 0
                self.cdigits = 0
            elif not lengths:
                self.reuse = False          # read until close
        # the client's head, as Exchange.on_response_head builds it
        if last_conn >= 0:       # the fields the last Connection field names are dropped
            flags = 0
            connection_tokens(p, g_h[last_conn].value, g_h[last_conn].value_len, &flags)
        else:
            global g_ntok
            g_ntok = 0
        g_out.len = 0
        buf_addb(&g_out, <bytes>lane.status_lines[status - 100])
        for k in range(nh):
            h = &g_h[k]
            kind = h.kind
            if (kind == H_HOP or kind == H_CONNECTION or kind == H_TRANSFER_ENCODING or kind == H_UPGRADE
                    or kind == H_PROXY_CONNECTION):
                continue
            if g_ntok and named_by_connection(p, h):
                continue
            add_field(&g_out, p, h)
        self.chunk_out = not bodiless and not has_length
        if self.chunk_out:
            buf_addb(&g_out, S_CHUNKED)
        buf_addb(&g_out, S_BACKEND)
        buf_addb(&g_out, self.name)
        buf_addb(&g_out, S_POOL)
        buf_addb(&g_out, client.pool_name)
        buf_add(&g_out, "\r\n", 2)
        if not rid_seen:
            buf_addb(&g_out, S_XRID)
            buf_addb(&g_out, client.rid)
            buf_add(&g_out, "\r\n", 2)
        if not client._keep_alive:
            buf_addb(&g_out, S_CLOSE)
        else:
            buf_add(&g_out, "\r\n", 2)
        client.status = status
        client._disarm_timer()
        self.head_sent = True
        # the body bytes that came with the head
        avail = n - hend
        if bodiless:
            done = True
            if avail:
                self.reuse = False
        elif transfer:
            self.state = U_CHUNKED
            if self.rechunk(p + hend, avail) < 0:
                broken = True       # the head goes out first, as the Python path's does
            done = self.cstate == CS_DONE
        elif lengths:
            take = length if length < avail else avail
            buf_add(&g_out, p + hend, take)
            self.left = length - take
            done = self.left == 0
            if avail > take:
                self.reuse = False
            self.state = U_CL
        else:
            self.state = U_EOF
            self.chunk_bytes(p + hend, avail)
        self.inbuf.len = 0
        if not done:
            lane.glue.head(client.req, status)   # the attempt ends at the head, as in Python
        client._write(PyBytes_FromStringAndSize(g_out.data, g_out.len))
        if broken:
            self.abort()
        elif done:
            self.finish()
        return 0

    cdef void chunk_bytes(self, const char *p, Py_ssize_t n) except *:
        """One chunk of ``p`` into g_out (``lbd.proxy.http.chunk``), nothing when empty."""
        cdef char hexlen[24]
        cdef int k
        if n <= 0:
            return
        k = snprintf(hexlen, 24, "%zx\r\n", n)
        buf_add(&g_out, hexlen, k)
        buf_add(&g_out, p, n)
        buf_add(&g_out, "\r\n", 2)

    cdef Py_ssize_t rechunk(self, const char *p, Py_ssize_t n) except -2:
        """Decode the chunked body in ``p`` and re-chunk each data span into g_out (what
        llhttp's on_body and ``chunk()`` make), the last chunk at its end; -1 when malformed."""
        cdef Py_ssize_t i = 0, take
        cdef int s, d
        cdef char c
        while i < n:
            s = self.cstate
            if s == CS_DATA:
                take = n - i
                if take > self.csize:
                    take = self.csize
                self.chunk_bytes(p + i, take)
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
                elif (c == b';' or c == b' ' or c == b'\t') and self.cdigits:
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
                buf_addb(&g_out, LAST_CHUNK)
                if i < n:
                    self.reuse = False
                return i
            else:
                return -1
        return i

    cdef finish(self):
        """The response is complete: the connection back to its backend's lane pool (or
        closed), the client on."""
        cdef LaneClient client = self.client
        self.client = None
        self.state = U_IDLE
        self.resume()     # the client's back-pressure was this response's, not the next one's
        if self.reuse and not self.closed and len(self.idle) < self.backend.max_idle:
            self.idle_since = self.lane._time()
            self.idle.append(self)
        else:
            self.close()
        client.up = None
        client.response_done(True)

    cdef int bad_response(self, str why) except -1:
        """A response head outside what the lane reads: the try failed (as a malformed
        response fails it in Python); nothing went to the client yet."""
        cdef LaneClient client = self.client
        self.client = None
        self.state = U_IDLE
        self.inbuf.len = 0
        self.close()
        if client is not None and client.up is self:
            client.up = None
            client._failed("reset", 502, "protocol", f"malformed response from backend: {why}")
        return 0

    cdef abort(self):
        """A malformed body after the head went out: close both."""
        cdef LaneClient client = self.client
        self.client = None
        self.state = U_IDLE
        self.close()
        if client is not None and client.up is self:
            client.up = None
            client.response_done(False)

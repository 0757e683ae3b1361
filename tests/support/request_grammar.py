"""A grammar of HTTP/1.1 requests for differential fuzzing (Hypothesis strategies): valid
pieces, odd ones now and then, and byte-level mutations; for the tests comparing the compiled
lane with llhttp and the Python data plane (tests/unit/proxy/test_lane_parse.py,
tests/integration/proxy/test_lane_fuzz.py).

Sized for client limits of ``LIMITS`` (URL 512, head 2048, 16 fields, body 4096), so that
their edges are reachable with small requests."""

from __future__ import annotations

import re

from hypothesis import strategies as st

LIMITS = {"max_head": 2048, "max_url": 512, "max_headers": 16, "max_body": 4096}
LIMITS_CONFIG = ("client: {{max_header_size: {max_head}, max_url_size: {max_url}, max_headers: {max_headers}, "
                 "max_body_size: {max_body}}}\n").format(**LIMITS)
PLAIN = b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n"

# Each piece is ordinary most of the time and odd now and then (``pick``), so that most
# examples are near the lane's edge rather than far outside it. Hypothesis shrinks towards
# the ordinary choice and the first entry of each list.

METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS"]
ODD_METHODS = [b"get", b"Get", b"TRACE", b"CONNECT", b"FOO", b"PRI", b"GETT", b"POS", b"M-SEARCH", b"PROPFIND",
               b"G\x00ET", b"", b"GET\x7f", b"G\xc3\xa9T", b"\x16\x03\x01"]
TARGETS = [b"/plain", b"/plain?q=1&r=%20x", b"/", b"//plain", b"/a/../plain", b"/chunked", b"/nolen", b"/204",
           b"/304", b"/hop", b"/rid", b"/status/500", b"/weird", b"/close", b"/keyed", b"/plain;p=1"]
ODD_TARGETS = [b"/" + b"u" * 510, b"/" + b"u" * 511, b"/" + b"u" * 512, b"*", b"http://other.example/plain",
               b"HTTP://h:80/plain?x", b"https://h", b"http://", b"plain",
               b"/pl ain", b"/pl\tain", b"/pl\"ain", b"/pl#frag", b"/pl<a>in", b"/{x}", b"/a|b", b"/a\\b", b"/a^b",
               b"/a`b", b"/pl\x7fain", b"/pl\x80ain", b"/pl\x00ain", b"/pl\x0bain", b"/pl\rain", b"/pl\nain",
               b"/" + b"u" * 2100]
ODD_VERSIONS = [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"HTTP/01.1",
                b"HTTP/1.10", b"HTTP/11", b"HTTP/1", b"HTTP/1.1x", b"", b"HTTPS/1.1", b"HTTP/1.1\t", b"HTTP/ 1.1"]
ODD_SPACES = [b"  ", b"\t", b"", b" \t", b"\x0b"]
ODD_EOLS = [b"\n", b"\r", b"\r\r\n", b"\n\r", b" \r\n", b"\t\r\n", b"\r\n ", b"\r\n\t"]
ODD_SEPARATORS = [b":", b":\t", b":  ", b" : ", b" :", b"\t:", b": \t", b"::", b"\x00:"]

NAMES = {
    "host": [b"Host", b"host", b"HOST"],
    "content-length": [b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Content-length"],
    "transfer-encoding": [b"Transfer-Encoding", b"transfer-encoding"],
    "connection": [b"Connection", b"connection", b"CONNECTION"],
    "proxy-connection": [b"Proxy-Connection"],
    "keep-alive": [b"Keep-Alive"],
    "te": [b"TE"],
    "trailer": [b"Trailer"],
    "upgrade": [b"Upgrade"],
    "expect": [b"Expect"],
    "x-forwarded-for": [b"X-Forwarded-For"],
    "x-request-id": [b"X-Request-ID"],
    "x-lbd-timeout-ms": [b"x-lbd-timeout-ms"],
    "prefer": [b"Prefer"],
    "retry-after": [b"Retry-After"],
    "other": [b"User-Agent", b"Accept", b"X-Custom", b"Cookie", b"Authorization", b"X-Empty", b"x", b"X-A.B_c~d",
              b"Content-Type", b"Content-Lengths", b"Host-Name", b"Transfer-Encodings", b"Connections"],
    "odd": [b"Content-Length ", b" Host", b"Host\t", b"Bad Name", b"X\x00Y", b"X-Caf\xc3\xa9", b"", b"X(y)",
            b"X\"y\"", b"X@y", b"X[y]", b"X{y}", b"X/y", b"X=y", b"X?y", b"X;y", b"X,y", b"\tX-Fold", b" X-Fold"],
}
# kinds of field the lane serves requests with, and kinds it hands over for (or that make it)
KINDS = (["other"] * 6 + ["content-length", "connection"] * 2
         + ["x-forwarded-for", "x-request-id", "retry-after", "keep-alive", "te", "trailer", "proxy-connection"],
         ["host", "transfer-encoding", "odd", "upgrade", "expect", "x-lbd-timeout-ms", "prefer"])

# ordinary values, then odd ones
LENGTHS = ([b"{n}", b"0"],
           [b"{n+1}", b"{n-1}", b"{n+2}", b"05", b"0{n}", b" {n}", b"{n} ", b"{n}\t", b"+{n}", b"-{n}", b"-1",
            b"{n},{n}", b"{n}, {n}", b"{n},", b"1e3", b"0x5", b"5.0", b"", b" ", b"4097", b"4096", b"70000",
            b"99999999999999999999", b"18446744073709551616", b"18446744073709551617", b"9223372036854775807",
            b"000000000000000005", b"{n}\x00", b"\xd9\xa3", b"{n} {n}", b"{n}\x0b"])
VALUES = {
    "host": ([b"h", b"example.com:8080", b"H", b"[::1]:80"],
             [b"", b"h h", b"h,h", b"h\t", b"h:bad:port", b"caf\xc3\xa9"]),
    "transfer-encoding": ([b"chunked"],
                          [b"Chunked", b"CHUNKED", b"chunked ", b"chunked\t", b"gzip, chunked", b"chunked, gzip",
                           b"identity", b"xchunked", b"chunked, chunked", b",chunked", b"chunked,", b"", b"gzip",
                           b"chunk", b"\"chunked\"", b"chunked;q=1"]),
    "connection": ([b"keep-alive", b"close", b"Close", b"Keep-Alive", b"keep-alive, close"],
                   [b"CLOSE", b"close\t", b"close ", b" close", b"close, keep-alive", b"keep-alive,close", b"close,",
                    b",close", b"close,,", b",", b"", b"upgrade", b"close, x-private", b"te", b"x-custom", b"closed",
                    b"c lose", b"keep-alive;x", b"close\tkeep-alive", b"\tclose", b"clo\tse",
                    b"keep-alive, keep-alive"]),
    "proxy-connection": ([b"close", b"keep-alive"], []),
    "keep-alive": ([b"timeout=5"], []),
    "te": ([b"trailers"], [b"gzip"]),
    "trailer": ([b"X-T"], []),
    "upgrade": ([b"websocket", b"h2c"], [b""]),
    "expect": ([b"100-continue"], [b"100-Continue", b"foo", b""]),
    "x-forwarded-for": ([b"203.0.113.9", b"a, b"], [b"", b"  spaced  "]),
    "x-request-id": ([b"client-id-1"], [b"", b"say \"hi\"", b"back\\slash", b"tab\there"]),
    "x-lbd-timeout-ms": ([b"1000"], [b"x", b""]),
    "prefer": ([b"respond-async", b"wait=1"], []),
    "retry-after": ([b"1", b"Wed, 21 Oct 2015 07:28:00 GMT"], []),
    "other": ([b"x", b"", b"  spaced  ", b"a\tb", b"a b c", b"()<>@,;:\\\"/[]?={}", b"~!#$%&'*+-.^_`|"],
              [b"caf\xc3\xa9", b"\x80", b"\xff", b"a\x01b", b"a\x00b", b"a\x7fb", b"a\x0bb", b"a\x1bb",
               b"z" * 1900]),
}
VALUES["odd"] = VALUES["other"]

BODIES = [b"", b"hello", b"{\"x\": true}"]
# what may be pipelined between the generated request and the next (a request, garbage)
BETWEEN = [PLAIN, PLAIN.replace(b"h\r\n", b"h\r\nContent-Length: 2\r\n") + b"okGET", b"hello", b"\r\n",
           b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", b"GET /" + b"u" * 600,
           b"GET /plain HTTP/1.1\r\n" + b"X: y\r\n" * 17, b"GET /plain HTTP/1.1\r\nBad Name: x\r\n\r\n",
           b"GET /plain HTTP/1.0\r\n\r\n", b"GET /keyed HTTP/1.1\r\nHost: h\r\n\r\n", b"G"]
ODD_BODIES = [b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n", b"\r\n",
              b"\r\n\r\n", b"\n", b"y" * 4097]
CHARS = [b"\r", b"\n", b"\r\n", b"\x00", b"\t", b" ", b"\x7f", b"\x80", b"\xff", b":", b",", b"\x0b", b"\x0c", b"\"",
         b"\r\n ", b"\r\n\t", b"\\", b"/", b"?", b"#", b"%", b"a", b"A", b"0", b"\r\n\r\n", b";"]
OPERATIONS = ["insert", "replace", "delete", "case", "dup-line", "drop-line"]


def pick(draw, ordinary: list, odd: list, one_in: int):
    """An ordinary choice, or (one time in ``one_in``) an odd one."""
    if odd and draw(st.integers(0, one_in - 1)) == one_in - 1:
        return draw(st.sampled_from(odd))
    return draw(st.sampled_from(ordinary))


def _length(template: bytes, n: int) -> bytes:
    return (template.replace(b"{n+1}", b"%d" % (n + 1)).replace(b"{n-1}", b"%d" % (n - 1))
            .replace(b"{n+2}", b"%d" % (n + 2)).replace(b"{n}", b"%d" % n))


@st.composite
def fields(draw, body_length: int) -> bytes:
    kind = pick(draw, *KINDS, 8)
    name = draw(st.sampled_from(NAMES[kind]))
    if kind == "content-length":
        value = _length(pick(draw, *LENGTHS, 3), body_length)
    else:
        value = pick(draw, *VALUES.get(kind, VALUES["other"]), 6)
    return name + pick(draw, [b": "], ODD_SEPARATORS, 20) + value + pick(draw, [b"\r\n"], ODD_EOLS, 40)


def _mutate(raw: bytearray, operation: str, at: int, char: bytes) -> None:
    at %= len(raw) + 1
    if operation == "insert":
        raw[at:at] = char
    elif at == len(raw):
        return
    elif operation == "replace":
        raw[at:at + 1] = char
    elif operation == "delete":
        del raw[at]
    elif operation == "case":
        raw[at:at + 1] = bytes(raw[at:at + 1]).swapcase()
    else:  # a whole line, again or gone
        start = raw.rfind(b"\n", 0, at) + 1
        end = raw.find(b"\n", at)
        end = len(raw) if end < 0 else end + 1
        raw[start:end] = raw[start:end] * 2 if operation == "dup-line" else b""


@st.composite
def requests(draw) -> tuple[bytes, int]:
    """A request (head and body, maybe mutated, now and then with more pipelined behind it),
    and where to cut it in two writes (0: one)."""
    line = (pick(draw, METHODS, ODD_METHODS, 12) + pick(draw, [b" "], ODD_SPACES, 30)
            + pick(draw, TARGETS, ODD_TARGETS, 10) + pick(draw, [b" "], ODD_SPACES, 30)
            + pick(draw, [b"HTTP/1.1"], ODD_VERSIONS, 12) + pick(draw, [b"\r\n"], ODD_EOLS, 30))
    body = pick(draw, BODIES, ODD_BODIES, 5) if draw(st.integers(0, 7)) else draw(st.binary(max_size=8))
    first = [] if draw(st.integers(0, 19)) == 19 else [b"Host: h\r\n"]
    if body and draw(st.integers(0, 7)) != 7:
        first.append(b"Content-Length: " + _length(pick(draw, [b"{n}"], LENGTHS[1], 4), len(body)) + b"\r\n")
    many = draw(st.integers(0, 9)) == 9      # the field count limit's edge
    more = draw(st.lists(fields(len(body)), min_size=14 if many else 0, max_size=18 if many else 3))
    lines = draw(st.permutations(first + more))
    raw = bytearray(line + b"".join(lines) + pick(draw, [b"\r\n"], ODD_EOLS, 30) + body)
    if draw(st.integers(0, 4)) == 4:
        chars = st.sampled_from(CHARS) | st.binary(min_size=1, max_size=2)
        for operation, at, char in draw(st.lists(st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 1 << 16),
                                                           chars), min_size=1, max_size=3)):
            _mutate(raw, operation, at, char)
    raw = bytes(raw) + pick(draw, [b""], BETWEEN, 6)
    # a cut before the head can end (no blank line yet): nothing can be answered between the writes
    blank = re.search(rb"\n\r?\n", raw)
    split = draw(st.integers(0, blank.start() if blank else len(raw))) if draw(st.integers(0, 3)) == 3 else 0
    return raw, split

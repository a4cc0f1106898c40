#!/usr/bin/env python3
"""Differential fuzzer for Tern: hostile memcached and Redis clients, checked against real servers.

Usage
-----
    python3 fuzz/differential.py --tern .build/release/tern                 # both protocols, 60 s each
    python3 fuzz/differential.py --tern PATH --protocol memcache --seconds 30 --seed 7
    python3 fuzz/differential.py --tern PATH --protocol redis --requests 200000
    python3 fuzz/differential.py --tern PATH --seconds 900 --requests 320000 --strict  # >= 10^6 requests each
    python3 fuzz/differential.py --tern PATH --protocol memcache --replay 'ms k 2 T0 T0 ...\\r\\nhi\\r\\n'
    python3 fuzz/differential.py --tern PATH --protocol auth --seconds 60          # AUTH/HELLO, see below

Needs memcached and redis-server on PATH (Debian: `apt-get install memcached redis-server`) and
Python 3.9+ (standard library only). Nothing is written outside a temporary directory, which
is removed on exit unless --keep is given (it holds the processes' logs and the config).

What it does
------------
1. Starts its own processes on free loopback ports: two memcached and two redis-server as Tern's
   backends, one more of each as a *reference* that the fuzzer talks to directly, and Tern with
   `--threads 1` (every client of a pool then shares one backend connection per server) over a
   memcached pool and a Redis pool of two servers each (`timeout: 2000`, `strict_keys: false`
   on the memcached pool, `hash_tag: "{}"` on the Redis pool). Everything is stopped on exit,
   Ctrl-C and exceptions included.
2. Generates cases (one to four requests each) for every command family, valid and mutated:
   memcached text and meta commands with random flag sets, base64/long/binary keys, lengths at
   and around every limit, non-canonical numbers and long lines; RESP multibulk and inline
   commands with non-canonical or wrong lengths, broken CRLFs, bad quoting and huge counts.
   Keys come from a per-lane namespace (`fz:<lane>:...`); commands that could wipe or
   reconfigure a server (flush_all, FLUSHALL, CONFIG, SHUTDOWN, ...) are never generated, and a
   deny-list check on the final bytes refuses any case that would spell one.
3. Each *lane* (`--lanes`, default 16 for memcached, 32 for Redis) holds one connection
   through Tern and one to the reference server and sends both the same batches: `--batch`
   cases, each followed by a *sentinel* whose replies are known exactly. The memcached sentinel
   is `get SNTL:a SNTL:b` (one key on each backend, so it passes through both shared backend
   connections right behind the case), `stats` (answered by Tern itself, so it ends the
   case even when the backends fail) and `mn`; the Redis sentinel is `MGET SNTL:a SNTL:b` and
   `ECHO SNTL<lane>E` (answered by Tern). Replies are split at the sentinels, so every case
   gets its own list of replies from Tern and from the reference. Lanes reuse their
   connections while batches end cleanly; after a close, a hang or any irregularity they
   reconnect, and a case at which only one side closed is run again alone (a server that
   closes with unread bytes sends a reset, which can discard replies still in flight).
   Checks on Tern's side alone: every reply is a well-framed protocol reply; each sentinel is
   answered exactly once and exactly as expected; Tern closes a connection only after an error
   reply; no reply carries a backend-failure text (`server closed the connection`, `Connection
   timed out`, ...), since nothing in this test makes a backend fail unless Tern let a request
   break it. Differential checks (Tern against the reference): the same number of replies per
   case, and the same close/hang behaviour. Error texts are not compared.
4. Canary: `--canaries` threads (default 2) with their own connections through Tern keep
   setting and reading their own keys (`canary:<n>:<k>`, unique values, pipelined six deep,
   across both servers) and check every reply byte for byte. A wrong value, unexpected error,
   extra bytes or a timeout is a FAILURE, printed with what was expected and what came.
5. After the fuzzing, the suspects (one per distinct case, in the order of SUSPECT_RANK, up to
   --confirm-max) are replayed one by one on a quiet Tern with an *observer* connection whose
   pipelined requests are queued right behind the case on the shared backend connections
   (several orderings, then once more after the case). A case that makes the observer see
   anything but its exact replies is a CONFIRMED ISOLATION BREAK: another client was
   affected. Suspects with every mutation tag of an already confirmed case are skipped. The
   smallest confirmed cases are shrunk (lines, data blocks with their byte counts, tokens,
   while the break still reproduces; --minimize-seconds each) and printed with their exact
   bytes as a Python expression. Finally the backends' settings (memcached `stats settings`,
   Redis `CONFIG GET`) are compared with a snapshot from the start, and Tern must still be
   alive and answering. `--replay` runs only this check, for one case given on the command
   line (Python escapes: \\r, \\n, \\xNN).

Output and exit status
----------------------
One line per protocol:
    differential: <protocol>: N cases, M requests, canary K ok, W wrong, closes C, mismatches X
followed by the mismatch groups (first 20: kind, label, count and the smallest example with the
replies from both sides), the canary failures and the confirmed isolation breaks. N counts the
cases whose outcome was judged, M the requests in them plus the sentinels, C the connections
Tern closed after reporting an error, X the differential and Tern-side findings listed below.

Kinds counted as mismatches (suspects for the confirmation step):
    lenient-close    the server closes the connection on this input, Tern accepts it
    ref-hang         the server waits for more bytes, Tern answered and went on
    more-replies     Tern answered more replies than the server
    fewer-replies    Tern answered fewer replies, none of them an error
    tern-hang        Tern stopped answering, the server did not
    sentinel-corrupt a sentinel's reply through Tern was wrong (shifted, partial, missing)
    backend-error    a reply through Tern carries a backend-failure text
    tern-framing     Tern sent bytes that are not a protocol reply
    silent-close     Tern closed the connection without an error reply (or mid-reply)
    trailing         Tern sent bytes after the last sentinel's reply
Tolerated (counted, not mismatches): Tern closing after a protocol error where the server went
on (Tern is stricter); Tern answering fewer replies with an error among them (it swallows a
rejected storage command's data block, as documented); more replies, a server that hangs or
closes, where the first reply in which Tern parts from the server is an error of Tern's own
and no backend failed (Tern refused the request itself: had it forwarded it, the backend would
have answered like the reference or failed); Tern waiting after its own error (it swallows
the declared data block of a refused storage command); a server that closed with a reset,
or that closed on a line it could not read (a data block Tern drops) with its queued replies
lost, where Tern answered those that came alike and later an error of its own; a `noreply` case with a key Tern refuses (too long, or binary), where
Tern is silent and drops (or waits for) the data block and the server reads that block as a
command; a case that opens a memcached connection with byte 0x80, which chooses the binary
protocol on both sides (each answers a response packet); both sides alike (close or hang).
Findings of the disturbance kinds within 3 s after another disturbance are counted as
"collateral" (one broken backend connection fails every lane's requests on it for a moment).

Exit status 1 on: any canary failure, a confirmed isolation break (the observer is a canary),
a changed backend setting, or Tern exiting; also on any mismatch with --strict. 0 otherwise.

Determinism: each lane's cases are a function of --seed and the lane number alone (and each
canary's keys and values of --seed). The interleaving of lanes and where a --seconds run stops
depend on timing; use --lanes 1 with --requests for a fully repeatable sequence.

AUTH/HELLO (--protocol auth)
----------------------------
A separate mode, not part of `both`: Tern with one Redis pool that has `redis_auth` (the
`default` user) and `users:` (AUTH_USERS) over two redis-servers with `requirepass`, and a
reference redis-server with the same users (`requirepass`, ACL SETUSER). Each session is a new
connection to each side, fed the same AuthGen frames: AUTH and HELLO with valid, wrong,
missing, oversized, odd-arity and binary arguments, mixed with GET/SET/DEL on allowed and
denied keys and commands that show the session's state (ACL WHOAMI, CLIENT GETNAME, PING).
Tern gets each step in one write (pipelined), the reference one frame at a time. Every reply is
compared after auth_normalize (documented differences: Redis 7.2 texts against Debian's 7.0,
HELLO's version and id) and, for HELLO, hello_for_reference (Tern reads every option before
authenticating, as Redis 7.2 does). `HELLO 3` is sent to Tern only and must answer -NOPROTO.
After the reference's 10th WRONGPASS in a row Tern must have sent the same reply and closed.
A session ends with a PING to both (both must answer alike, or both have closed). Any
difference is a mismatch and the exit status is 1; `--lanes` sets how many key namespaces
the sessions rotate through (default 1); `--requests` bounds the frames.

Throughput and the long run
---------------------------
On a 2-core VM shared with Tern (--threads 1) and six servers: about 2,400-3,000 memcached
cases/s (4.2 requests each, sentinel included) and 1,500-2,500 Redis cases/s (3.2 requests
each; many Redis cases end in a protocol-error close, which costs a reconnect). 10^6 requests
per protocol therefore take about two minutes for memcached and three for Redis:
    python3 fuzz/differential.py --tern PATH --seconds 600 --requests 320000 --strict

Limitations
-----------
- One reference server stands in for the pool: per-server state (cas uniques, `me` output)
  differs, so only reply counts and close/hang behaviour are compared, not reply contents.
- Mismatches are not all bugs: Tern answers some commands itself (version, verbosity, mn, PING,
  ECHO, unsupported Redis commands) and refuses input the servers forgive. The confirmation
  step separates those from the ones that disturb other clients.
- A backend broken by one case disturbs every lane for a moment; findings are attributed by
  time (collateral) and then by replaying suspects alone, not by instrumenting Tern. A break
  that needs two cases from different connections is seen by the canaries but not confirmed.
- The references have bugs of their own: memcached 1.6.18 drops the reply to a `stats` or
  `version` when the next command is a get with a key over 250 bytes (hence the sentinel's
  closing `mn`), and Redis waits forever on an inline command containing a NUL byte (strchr);
  such cases show up as tolerated differences or reference hangs.
- A silent side counts as hung after 0.5 s (reference) or 2.6 s (Tern, which waits up to the
  2 s pool timeout for a backend), so inputs that make a side wait for gigabytes are rare.
"""

import argparse
import base64
import codecs
import collections
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------

BACKEND_TIMEOUT_MS = 2000          # the pool `timeout`
BATCH_DEADLINE = 3.5               # seconds a lane waits for a batch (more than the pool timeout)
TERN_IDLE = 2.6                    # a silent Tern connection is hung after this (pool timeout + margin)
REF_IDLE = 0.5                     # a silent reference server is hung after this
CANARY_TIMEOUT = 5.0               # seconds a canary waits for its replies
COLLATERAL_WINDOW = 3.0            # seconds after a disturbance in which other findings are collateral
PAD_CAP = 2 << 20                  # declared data lengths up to this are padded so nothing hangs
MEMCACHED_MAXBYTES = 64 << 20      # -m 64

# Words that must never appear in a generated case (substring, case-insensitive). Generated
# values and keys use hex digits and a few binary bytes, which cannot spell any of them.
DENY_WORDS = [
    # memcached administration
    b"flush_all", b"shutdown", b"cache_memlimit", b"lru_crawler", b"lru", b"slabs", b"watch",
    b"stats", b"quit", b"misbehave", b"debugtime",
    # Redis administration and connection-state commands
    b"flushall", b"flushdb", b"config", b"debug", b"monitor", b"subscribe", b"multi", b"exec",
    b"blpop", b"brpop", b"bzpop", b"blmove", b"blmpop", b"bzmpop", b"brpoplpush", b"client",
    b"replicaof", b"slaveof", b"save", b"bgrewriteaof", b"sync", b"failover", b"module", b"acl",
    b"script", b"function", b"eval", b"fcall", b"migrate", b"swapdb", b"select", b"hello",
    b"reset", b"keys", b"scan", b"cluster", b"latency", b"slowlog", b"memory", b"object",
    b"wait", b"xread", b"move", b"restore", b"readonly", b"auth",
]


WORD_RE = re.compile(rb"[a-z_]{3,}")
REPEAT_RE = re.compile(rb"(.)\1{2,}")
VERBOSE_RE = re.compile(rb"verbosity[ \t]+\+?0*[1-9]")


def denied(data):
    """Whether `data` spells a denied word, in any case, or raises memcached's verbosity.
    Searches the distinct letter runs only (with runs of one letter shortened: no denied word
    has a letter three times in a row), so long values and keys cost little."""
    low = data.lower()
    words = set(WORD_RE.findall(low))
    if not words:
        return False
    skeleton = REPEAT_RE.sub(rb"\1\1", b" ".join(words))
    if any(word in skeleton for word in DENY_WORDS):
        return True
    return b"verbosity" in skeleton and VERBOSE_RE.search(low) is not None


# Texts Tern puts in replies when a backend failed (ServerConnection.fail reasons and errno texts).
BACKEND_FAILURE_RE = re.compile(
    rb"server closed the connection|server sent an (?:unexpected|invalid) reply|Connection timed out"
    rb"|Connection reset|Broken pipe|Connection refused|no server available")

SENTINEL_MARK = b"SNTL"         # prefix of the sentinels' keys and values

INTERESTING = {"lenient-close", "ref-hang", "more-replies", "fewer-replies", "tern-hang",
               "sentinel-corrupt", "backend-error", "tern-framing", "silent-close", "trailing"}
# Which suspects the confirmation step tries first: differences the case shows by itself, then
# signs of a disturbed backend (which another lane's case may have caused), then bad framing
# (seen so far only in replies that a backend failure had cut short).
SUSPECT_RANK = {"lenient-close": 0, "ref-hang": 0, "more-replies": 0, "fewer-replies": 0,
                "sentinel-corrupt": 1, "backend-error": 1, "silent-close": 1, "trailing": 1,
                "tern-hang": 1, "tern-framing": 2}
# Kinds that can be a consequence of another case breaking a shared backend connection.
DISTURBANCE = {"sentinel-corrupt", "backend-error", "tern-hang", "more-replies", "fewer-replies",
               "trailing", "silent-close"}


class Framing(Exception):
    """Bytes that are not a well-framed reply."""


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------

class Processes:
    """Child processes on free loopback ports, all stopped by stop_all()."""

    def __init__(self, keep):
        self.dir = tempfile.mkdtemp(prefix="tern-differential-")
        self.keep = keep
        self.children = []      # (name, Popen, log file)
        self.ports = set()

    def free_port(self):
        """A port below the ephemeral range that nothing is bound to (see Harness.swift)."""
        upper = 32768
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                start = int(f.read().split()[0])
                if start > 11000:
                    upper = min(upper, start)
        except (OSError, ValueError, IndexError):
            pass
        picker = random.Random()        # ports need not be deterministic
        while True:
            port = picker.randrange(10000, upper)
            if port in self.ports:
                continue
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            finally:
                probe.close()
            self.ports.add(port)
            return port

    def start(self, name, argv, port):
        log = open(os.path.join(self.dir, name + ".log"), "wb")
        # A session of its own: Ctrl-C reaches the fuzzer only, which then stops the children.
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.children.append((name, child, log))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError("%s exited with %s:\n%s" % (name, child.returncode, self.log_tail(name)))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return child
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("%s does not listen on %d:\n%s" % (name, port, self.log_tail(name)))

    def memcached(self, name):
        port = self.free_port()
        argv = ["memcached", "-U", "0", "-l", "127.0.0.1", "-p", str(port), "-m", "64"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]          # memcached refuses to run as root without it
        return port, self.start(name, argv, port)

    def redis(self, name):
        port = self.free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir]
        return port, self.start(name, argv, port)

    def log_tail(self, name, lines=30):
        try:
            with open(os.path.join(self.dir, name + ".log"), "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop_all(self):
        for _, child, _ in reversed(self.children):
            if child.poll() is None:
                try:
                    child.send_signal(signal.SIGCONT)
                    child.terminate()
                except OSError:
                    pass
        for _, child, log in reversed(self.children):
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            log.close()
        self.children = []
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Reply framing
# ----------------------------------------------------------------------------------------------

MC_LINES = {b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED", b"TOUCHED", b"OK",
            b"END", b"ERROR", b"HD", b"NF", b"NS", b"EX", b"EN", b"MN", b"RESET"}
MC_PREFIXES = (b"CLIENT_ERROR", b"SERVER_ERROR", b"ERROR ", b"VERSION ", b"ME ", b"HD ", b"NF ",
               b"NS ", b"EX ", b"EN ")
SIZE_RE = re.compile(rb"(0|[1-9][0-9]{0,9})")
RESP_INT_RE = re.compile(rb"-?(0|[1-9][0-9]{0,18})")


def mc_reply_end(buf, pos):
    """End offset of the memcached reply at buf[pos:], -1 when incomplete; raises Framing."""
    nl = buf.find(b"\n", pos)
    if nl < 0:
        if len(buf) - pos > 65536:
            raise Framing("reply line without end")
        return -1
    if nl == pos or buf[nl - 1] != 13:
        raise Framing("reply line not ended by CRLF")
    first = buf[pos]
    if first == 0x56:                                   # V: VALUE, VA, VERSION
        if buf.startswith(b"VALUE ", pos):
            return _mc_block_end(buf, pos)
        if buf.startswith(b"VA ", pos):
            token = bytes(buf[pos + 3:nl - 1]).split(b" ", 1)[0]
            if not SIZE_RE.fullmatch(token):
                raise Framing("bad VA size %r" % token)
            end = nl + 1 + int(token) + 2
            if len(buf) < end:
                return -1
            if buf[end - 2:end] != b"\r\n":
                raise Framing("VA data not ended by CRLF")
            return end
    if first == 0x53 and buf.startswith(b"STAT ", pos):   # S: stats
        return _mc_block_end(buf, pos)
    line = bytes(buf[pos:nl - 1])
    if line in MC_LINES or line.startswith(MC_PREFIXES) or (line.isdigit() and len(line) <= 20):
        return nl + 1
    raise Framing("unknown reply line %r" % line[:80])


def _mc_block_end(buf, pos):
    """VALUE records (or STAT lines) up to END."""
    p = pos
    while True:
        nl = buf.find(b"\n", p)
        if nl < 0:
            return -1
        if buf[nl - 1] != 13:
            raise Framing("reply line not ended by CRLF")
        if nl - p == 4 and buf.startswith(b"END", p):
            return nl + 1
        if buf.startswith(b"VALUE ", p):
            parts = bytes(buf[p:nl - 1]).split(b" ")
            if len(parts) not in (4, 5) or not SIZE_RE.fullmatch(parts[3]):
                raise Framing("bad VALUE line %r" % bytes(buf[p:nl + 1])[:80])
            end = nl + 1 + int(parts[3]) + 2
            if len(buf) < end:
                return -1
            if buf[end - 2:end] != b"\r\n":
                raise Framing("VALUE data not ended by CRLF")
            p = end
        elif buf.startswith(b"STAT ", p):
            p = nl + 1
        else:
            raise Framing("bad line in a retrieval reply %r" % bytes(buf[p:nl + 1])[:80])


def resp_reply_end(buf, pos):
    """End offset of the RESP2 reply at buf[pos:], -1 when incomplete; raises Framing."""
    need = 1
    p = pos
    size = len(buf)
    while need:
        if p >= size:
            return -1
        kind = buf[p]
        crlf = buf.find(b"\r\n", p)
        if crlf < 0:
            if size - p > 65536:
                raise Framing("reply line without end")
            return -1
        if kind in (0x2b, 0x2d):                        # + -
            p = crlf + 2
            need -= 1
        elif kind in (0x3a, 0x24, 0x2a):                # : $ *
            token = bytes(buf[p + 1:crlf])
            if not RESP_INT_RE.fullmatch(token):
                raise Framing("bad integer %r" % token[:40])
            value = int(token)
            p = crlf + 2
            need -= 1
            if kind == 0x24:
                if value >= 0:
                    end = p + value + 2
                    if size < end:
                        return -1
                    if buf[end - 2:end] != b"\r\n":
                        raise Framing("bulk string not ended by CRLF")
                    p = end
                elif value != -1:
                    raise Framing("bulk length %d" % value)
            elif kind == 0x2a:
                if value > 0:
                    need += value
                elif value < -1:
                    raise Framing("array length %d" % value)
        else:
            raise Framing("unknown reply type %r" % bytes(buf[p:p + 1]))
    return p


def is_stats_reply(reply):
    return reply[:5] == b"STAT "


def mc_is_error(reply):
    return reply.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))


def resp_is_error(reply):
    return reply[:1] == b"-"


# ----------------------------------------------------------------------------------------------
# Small blocking client (setup, canaries, confirmation)
# ----------------------------------------------------------------------------------------------

def connect(port, timeout=5.0):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_replies(sock, framer, count, timeout=5.0):
    """Reads `count` whole replies; returns them (fewer on timeout or close)."""
    buf = bytearray()
    replies = []
    pos = 0
    deadline = time.monotonic() + timeout
    while len(replies) < count:
        end = framer(buf, pos)
        if end >= 0:
            replies.append(bytes(buf[pos:end]))
            pos = end
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 16)
        except (socket.timeout, OSError):
            break
        if not data:
            break
        buf += data
    return replies


def read_expected(sock, expected, framer, timeout):
    """Reads until `expected` has arrived. Returns (ok, got, why). On the first byte that
    differs it keeps reading (up to the backend timeout and a bit) so the report shows the whole
    wrong replies."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    why = ""
    while True:
        if len(got) >= len(expected):
            if bytes(got) == expected:
                return True, bytes(got), ""
            why = "wrong reply" if got[:len(expected)] != expected else "extra bytes"
            break
        if got != expected[:len(got)]:
            why = "wrong reply"
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, bytes(got), "timeout"
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            return False, bytes(got), "timeout"
        except OSError as error:
            return False, bytes(got), "connection error: %s" % error
        if not data:
            return False, bytes(got), "connection closed"
        got += data
    # Collect what else comes, to show it.
    settle = time.monotonic() + BACKEND_TIMEOUT_MS / 1000 + 0.5
    while time.monotonic() < settle:
        sock.settimeout(max(0.01, min(0.3, settle - time.monotonic())))
        try:
            data = sock.recv(1 << 16)
        except (socket.timeout, OSError):
            break
        if not data:
            break
        got += data
    return False, bytes(got), why


def drain_case(sock, framer, is_term, timeout):
    """Reads replies until the sentinel's terminator, a close, bad framing or `timeout`."""
    got = bytearray()
    pos = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            end = framer(got, pos)
        except Framing:
            break
        if end >= 0:
            if is_term(bytes(got[pos:end])):
                break
            pos = end
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(1 << 16)
        except (socket.timeout, OSError):
            break
        if not data:
            break
        got += data
    return bytes(got)


# ----------------------------------------------------------------------------------------------
# Cases and generators
# ----------------------------------------------------------------------------------------------

class Case:
    __slots__ = ("data", "requests", "label")

    def __init__(self, data, requests, label):
        self.data = data
        self.requests = requests
        self.label = label


BINARY_KEY_BYTES = [0x00, 0x01, 0x02, 0x07, 0x08, 0x09, 0x0b, 0x0c, 0x0d, 0x1b, 0x1f, 0x7f,
                    0x80, 0x9f, 0xc3, 0xe2, 0xfe, 0xff]
WEIRD_NUMBERS = [b"00", b"+0", b"-0", b"+1", b"-1", b"01", b"007", b"4294967295", b"4294967296",
                 b"2147483647", b"2147483648", b"18446744073709551615", b"18446744073709551616",
                 b"99999999999999999999999", b"-9223372036854775808", b"0x10", b"1e3", b"1.5",
                 b"", b"a", b" 1", b"1 "]


class Gen:
    """Shared helpers: hex values, numbers, keys from the lane's namespace."""

    def __init__(self, seed, lane):
        self.r = random.Random("%s/%d" % (seed, lane))
        self.lane = lane
        self.epoch = 0

    def ns(self):
        # A new epoch (fresh key namespace) after Tern and the reference drifted apart.
        return b"fz:%d:%d:" % (self.lane, self.epoch)

    def hexs(self, n):
        if n <= 0:
            return b""
        if n > 4096:
            return (b"%x" % self.r.getrandbits(64)).rjust(16, b"0") * (n // 16) + b"a" * (n % 16)
        return format(self.r.getrandbits(4 * n), "0%dx" % n).encode()

    def pick(self, weighted):
        """weighted: [(weight, value)]."""
        total = sum(w for w, _ in weighted)
        x = self.r.random() * total
        for w, v in weighted:
            x -= w
            if x < 0:
                return v
        return weighted[-1][1]

    def small_count(self):
        return self.pick([(60, self.r.randint(1, 3)), (25, self.r.randint(4, 10)), (12, self.r.randint(11, 60)),
                          (3, self.r.randint(61, 400))])

    def number(self, normal, tags):
        if self.r.random() < 0.12:
            tags.add("num")
            return self.r.choice(WEIRD_NUMBERS)
        return b"%d" % self.r.choice(normal)

    def value(self, tags):
        r = self.r.random()
        if r < 0.70:
            return self.hexs(self.r.randint(0, 40))
        if r < 0.87:
            return self.hexs(self.r.randint(41, 3000))
        if r < 0.97:
            tags.add("binval")
            return bytes(self.r.choice(BINARY_KEY_BYTES + [0x0a, 0x0d, 0x20, 0x61]) for _ in range(self.r.randint(1, 30)))
        if r < 0.9995:
            return self.hexs(self.r.randint(3000, 70000))
        tags.add("bigval")
        return b"b" * self.r.choice([1048000, 1048575, 1048576, 1048577, 1048600])

    def plain_key(self):
        return self.ns() + b"%x" % self.r.randint(0, 31)


class MemcacheGen(Gen):
    """memcached text and meta requests, valid and mutated."""

    STORAGE = [b"set", b"add", b"replace", b"append", b"prepend", b"cas"]
    META_FLAGS = {
        b"mg": b"bcfhklOqstuvENRT",
        b"ms": b"bcCEFIkOqsSTMN",
        b"md": b"bCEIkOqTx",
        b"ma": b"bCENJDTMOqtcvk",
        b"me": b"b",
    }
    TOKEN_FLAGS = b"OENRTCFSMJD"

    def key(self, tags):
        r = self.r.random()
        if r < 0.78:
            return self.plain_key()
        if r < 0.86:
            tags.add("longkey")
            length = self.r.choice([249, 250, 251, 252, self.r.randint(240, 260), 300, 1000])
            base = self.ns()
            return base + b"k" * max(0, length - len(base))
        if r < 0.95:
            tags.add("binkey")
            middle = bytes(self.r.choice(BINARY_KEY_BYTES) for _ in range(self.r.randint(1, 4)))
            return self.ns() + middle + b"%x" % self.r.randint(0, 7)
        if r < 0.97:
            tags.add("nlkey")
            return self.ns() + self.r.choice([b"\n", b" ", b"\r\n", b"\t"]) + b"x"
        tags.add("tagkey")
        return b"{" + self.ns() + b"}" + b"%x" % self.r.randint(0, 7)

    def eol(self, tags):
        if self.r.random() < 0.08:
            tags.add("lf")
            return b"\n"
        return b"\r\n"

    def sep(self, tags):
        r = self.r.random()
        if r < 0.92:
            return b" "
        tags.add("spaces")
        return self.r.choice([b"  ", b"   ", b" " * self.r.randint(4, 40), b"\t", b" \t"])

    def length_token(self, true_length, tags):
        """The declared byte count and the number it stands for (None when not a number)."""
        r = self.r.random()
        if r < 0.78:
            return b"%d" % true_length, true_length
        if r < 0.88:
            tags.add("badlen")
            declared = max(0, true_length + self.r.choice([-2, -1, 1, 2, 5]))
            return b"%d" % declared, declared
        if r < 0.95:
            tags.add("noncanonlen")
            form = self.r.choice([b"0%d", b"00%d", b"+%d", b"%d "])
            return form % true_length, true_length
        if r < 0.988:
            tags.add("neglen")
            token = self.r.choice([b"-1", b"-0", b"-2", b"x", b"", b"1.0"])
            return token, 0 if token == b"-0" else None
        tags.add("hugelen")
        # Over the item size: padded (1-2 MB on the wire, so rare) or, rarer still, never
        # satisfiable (whoever swallows it waits for gigabytes: the lane's batch times out).
        r = self.r.random()
        if r < 0.9:
            token = self.r.choice([b"99999999999", b"-2147483649", b"18446744073709551616"])
        elif r < 0.97:
            token = self.r.choice([b"1048577", b"2097152"])
        else:
            token = self.r.choice([b"2147483647", b"4294967295", b"2147483646"])
        return token, int(token)

    def data_block(self, data, declared, tags):
        """The data, its terminator and, when the declared length is larger, filler so the
        block is complete and the next request starts on a line of its own."""
        terminator = b"\r\n"
        if self.r.random() < 0.05:
            tags.add("badterm")
            terminator = self.r.choice([b"\n", b"\r", b"", b"XX", b"\r\n\r\n", b" \r\n"])
        block = data + terminator
        if declared is not None and 0 <= declared <= PAD_CAP and declared + 2 > len(block):
            missing = declared + 2 - len(block)
            if missing >= 2 and self.r.random() < 0.5:
                block += b"." * (missing - 2) + b"\r\n"
            else:
                block += b"." * missing + b"\r\n"
        elif not block.endswith(b"\n"):
            block += b"\r\n"
        return block

    def noreply(self, tags):
        if self.r.random() < 0.12:
            tags.add("noreply")
            return [self.r.choice([b"noreply", b"noreply", b"NOREPLY", b"noreplyx"])]
        return []

    # Families ---------------------------------------------------------------------------

    def retrieval(self, tags):
        command = self.r.choice([b"get", b"gets", b"gat", b"gats"])
        parts = [command]
        if command in (b"gat", b"gats"):
            parts.append(self.number([0, 0, 3600, -1, 100000], tags))
        parts += [self.key(tags) for _ in range(self.small_count())]
        if self.r.random() < 0.03:
            tags.add("nokeys")
            parts = parts[:2] if command in (b"gat", b"gats") else parts[:1]
        line = self.sep(tags).join(parts)
        if self.r.random() < 0.04:
            tags.add("leadspace")
            line = b" " + line
        return command.decode(), line + self.eol(tags), 1

    def storage(self, tags):
        command = self.r.choice(self.STORAGE)
        data = self.value(tags)
        token, declared = self.length_token(len(data), tags)
        parts = [command, self.key(tags), self.number([0, 1, 65535, 4294967295], tags),
                 self.number([0, 0, 0, 3600, -1], tags), token]
        if command == b"cas":
            parts.append(self.number([1, 2, 12345, 0], tags))
        parts += self.noreply(tags)
        if self.r.random() < 0.03:
            tags.add("arity")
            if self.r.random() < 0.5:
                del parts[self.r.randint(1, len(parts) - 1)]
            else:
                parts.append(self.hexs(3))
        line = self.sep(tags).join(parts) + self.eol(tags)
        return command.decode(), line + self.data_block(data, declared, tags), 1

    def keyed(self, tags):
        command = self.r.choice([b"delete", b"incr", b"decr", b"touch"])
        parts = [command, self.key(tags)]
        if command == b"delete":
            if self.r.random() < 0.2:
                parts.append(self.r.choice([b"0", b"5", b"00", b"x"]))
        elif command in (b"incr", b"decr"):
            parts.append(self.number([0, 1, 5, 18446744073709551615], tags))
        else:
            parts.append(self.number([0, 3600, -1], tags))
        parts += self.noreply(tags)
        if self.r.random() < 0.03:
            tags.add("arity")
            parts = parts[:1] if self.r.random() < 0.5 else parts + [self.hexs(2)]
        return command.decode(), self.sep(tags).join(parts) + self.eol(tags), 1

    def local(self, tags):
        if self.r.random() < 0.5:
            parts = [b"version"] + ([self.hexs(2)] if self.r.random() < 0.1 else [])
            return "version", b" ".join(parts) + self.eol(tags), 1
        # verbosity only with 0 and its spellings: Tern answers it itself, the reference obeys.
        parts = [b"verbosity"] + ([self.r.choice([b"0", b"00", b"-0", b"+0"])] if self.r.random() < 0.8 else [])
        parts += self.noreply(tags)
        return "verbosity", b" ".join(parts) + self.eol(tags), 1

    def meta_key(self, command, tags, flags):
        r = self.r.random()
        if r < 0.22:
            flags.append(b"b")
            kind = self.r.random()
            if kind < 0.35:
                raw = self.ns() + self.hexs(self.r.randint(1, 20))
            elif kind < 0.90:
                # Encoded length around the 250-byte key limit: 244..400 characters.
                raw = self.ns() + bytes(self.r.choice(BINARY_KEY_BYTES + [0x61]) for _ in range(self.r.randint(177, 300)))
            else:
                tags.add("badb64")
                return self.r.choice([b"abc", b"ab=c", b"====", b"a*bc", b"YWJj\x00", b"Y" * 333])
            encoded = base64.b64encode(raw)
            tags.add("b64>250" if len(encoded) > 250 else "b64")
            return encoded
        return self.key(tags)

    def meta_flag(self, command):
        r = self.r.random()
        valid = self.META_FLAGS[command]
        if r < 0.72:
            letter = bytes([self.r.choice(valid)])
        elif r < 0.86:
            letter = bytes([self.r.choice(b"ABGHKLPQUVWXYZadegijmnoprswxyz0123456789!#%&*-+=")])
        elif r < 0.94:
            return bytes([self.r.choice(valid)]) + self.hexs(self.r.randint(30, 300))
        else:
            return bytes([self.r.choice(BINARY_KEY_BYTES)])
        if letter[0] in self.TOKEN_FLAGS:
            if letter == b"O":
                return letter + self.hexs(self.pick([(8, self.r.randint(0, 8)), (2, self.r.randint(9, 31)),
                                                     (2, self.r.randint(32, 40))]))
            if letter == b"M":
                return letter + bytes([self.r.choice(b"EAPRSI+D-x")])
            return letter + self.r.choice([b"0", b"1", b"60", b"3600", b"-1", b"00", b"99999999999999999999", b""])
        return letter

    def meta(self, tags):
        command = self.r.choice([b"mg", b"mg", b"ms", b"ms", b"md", b"ma", b"me", b"mn"])
        if command == b"mn":
            extra = b" " + self.hexs(2) if self.r.random() < 0.1 else b""
            return "mn", b"mn" + extra + self.eol(tags), 1
        flags = []
        key = self.meta_key(command, tags, flags)
        count = self.pick([(45, self.r.randint(0, 4)), (25, self.r.randint(5, 16)),
                           (22, self.r.randint(17, 32)), (8, self.r.randint(33, 40))])
        flags += [self.meta_flag(command) for _ in range(count)]
        self.r.shuffle(flags)
        if len(flags) > 16:
            tags.add("flags>16")
        if len(flags) > 32:
            tags.add("flags>32")
        parts = [command, key]
        data_block = b""
        if command == b"ms":
            data = self.value(tags)
            token, declared = self.length_token(len(data), tags)
            parts.append(token)
            data_block = self.data_block(data, declared, tags)
        line = self.sep(tags).join(parts + flags) + self.eol(tags)
        return command.decode(), line + data_block, 1

    def long_line(self, tags):
        """A line of an exact length around a limit: 2048, 16 KiB, or 70000 bytes."""
        target = self.r.choice([2046, 2047, 2048, 2049, 2050, 16382, 16383, 16384, 16385, 16386,
                                16387, 20000, 70000])
        command = self.r.choice([b"get", b"gets", b"gat", b"gats", b"gat", b"set", b"mg", b"delete", b"incr"])
        tags.add("long")
        if target > 16384:
            tags.add("long>16K")
        eol = self.eol(tags)
        if command in (b"get", b"gets", b"gat", b"gats"):
            line = command + (b" 0" if command in (b"gat", b"gats") else b"")
            key = self.plain_key()
            line += (b" " + key) * ((target - len(line) - len(eol)) // (1 + len(key)))
            line += b" " * (target - len(line) - len(eol))
            return command.decode(), line + eol, 1
        if command == b"set":
            line = b"set " + self.plain_key() + b" 0 0 2"
            line += b" " * max(0, target - len(line) - len(eol))
            return "set", line + eol + b"hi\r\n", 1
        if command == b"mg":
            line = b"mg " + self.plain_key() + b" v O"
            line += self.hexs(max(0, target - len(line) - len(eol)))
            return "mg", line + eol, 1
        line = command + b" " + self.plain_key() + (b" 1" if command == b"incr" else b"")
        line += b" " * max(0, target - len(line) - len(eol))
        return command.decode(), line + eol, 1

    def mutate(self, data, tags):
        """A byte-level mutation of the first line (the data block is left alone)."""
        nl = data.find(b"\n")
        line, rest = (data[:nl + 1], data[nl + 1:]) if nl >= 0 else (data, b"")
        if len(line) < 2:
            return data
        i = self.r.randrange(len(line) - 1)
        kind = self.r.randrange(5)
        tags.add("mut")
        if kind == 0:
            line = line[:i] + bytes([self.r.choice(BINARY_KEY_BYTES + [0x20, 0x0a, 0x0d, 0x30])]) + line[i + 1:]
        elif kind == 1:
            line = line[:i] + bytes([self.r.choice(BINARY_KEY_BYTES + [0x20, 0x0a, 0x0d, 0x30])]) + line[i:]
        elif kind == 2:
            line = line[:i] + line[i + 1:]
        elif kind == 3:
            tokens = line.rstrip(b"\r\n").split(b" ")
            j = self.r.randrange(len(tokens))
            tokens.insert(j, tokens[j])
            line = b" ".join(tokens) + b"\r\n"
        else:
            line = line.upper() if self.r.random() < 0.5 else line.rstrip(b"\r\n") + b" " + self.hexs(4) + b"\r\n"
        return line + rest

    def one(self):
        tags = set()
        family = self.pick([(22, self.retrieval), (24, self.storage), (10, self.keyed), (4, self.local),
                            (34, self.meta), (3, self.long_line)])
        name, data, requests = family(tags)
        if self.r.random() < 0.07:
            data = self.mutate(data, tags)
        return name, data, requests, tags

    def case(self):
        while True:
            names, parts, requests, tags = [], [], 0, set()
            for _ in range(1 if self.r.random() < 0.9 else self.r.randint(2, 4)):
                name, data, count, more = self.one()
                while parts and name in ("get", "gets", "gat", "gats") and "longkey" in more:
                    # memcached 1.6.18 drops the reply to the previous command when a get has a
                    # key over 250 bytes; a case's first request follows the sentinel's `mn`,
                    # whose reply it keeps.
                    name, data, count, more = self.one()
                names.append(name)
                parts.append(data)
                requests += count
                tags |= more
            data = b"".join(parts)
            if not data.endswith(b"\n"):
                data += b"\r\n"
            if denied(data):
                continue
            label = "+".join(names) + ("[" + ",".join(sorted(tags)) + "]" if tags else "")
            return Case(data, requests, label)


class RedisGen(Gen):
    """RESP requests: multibulk and inline, valid and mutated."""

    # name, argument pattern: k key, K 1..n keys, v value, n number, f field, V 1..n values,
    # P 1..n key/value pairs, F 1..n field/value pairs, S 1..n score/member pairs, o SET options
    COMMANDS = [
        ("GET", "k"), ("SET", "kvo"), ("MGET", "K"), ("MSET", "P"), ("DEL", "K"), ("EXISTS", "K"),
        ("INCR", "k"), ("DECR", "k"), ("INCRBY", "kn"), ("APPEND", "kv"), ("STRLEN", "k"),
        ("GETRANGE", "knn"), ("SETRANGE", "knv"), ("SETNX", "kv"), ("SETEX", "knv"), ("GETSET", "kv"),
        ("GETDEL", "k"), ("HSET", "kF"), ("HGET", "kf"), ("HDEL", "kf"), ("HGETALL", "k"),
        ("HINCRBY", "kfn"), ("HLEN", "k"), ("HMGET", "kff"), ("LPUSH", "kV"), ("RPUSH", "kV"),
        ("LRANGE", "knn"), ("LPOP", "k"), ("RPOP", "k"), ("LLEN", "k"), ("LINDEX", "kn"),
        ("SADD", "kV"), ("SMEMBERS", "k"), ("SCARD", "k"), ("SISMEMBER", "kv"), ("SREM", "kV"),
        ("ZADD", "kS"), ("ZRANGE", "knn"), ("ZSCORE", "kv"), ("ZCARD", "k"), ("EXPIRE", "kn"),
        ("PEXPIRE", "kn"), ("TTL", "k"), ("PTTL", "k"), ("PERSIST", "k"), ("TYPE", "k"),
        ("TOUCH", "K"), ("UNLINK", "K"), ("PING", ""), ("PING", "v"), ("ECHO", "v"), ("DBSIZE", ""),
        ("RENAME", "kk"), ("SINTER", "K"), ("LPOS", "kv"), ("STRLEN", "kv"), ("GET", ""),
        ("FOO", "kv"), ("getx", "k"),
    ]
    CASES = [str.upper, str.lower, str.title]

    def key(self, tags):
        r = self.r.random()
        if r < 0.75:
            return self.plain_key()
        if r < 0.90:
            tags.add("tagkey")
            return b"{" + self.ns() + b"}:" + b"%x" % self.r.randint(0, 15)
        if r < 0.98:
            tags.add("binkey")
            return self.ns() + bytes(self.r.choice(BINARY_KEY_BYTES + [0x0a, 0x20]) for _ in range(self.r.randint(1, 4)))
        tags.add("longkey")
        return self.ns() + b"k" * self.pick([(6, 250), (3, 1000), (1, 70000)])

    def arguments(self, tags):
        name, pattern = self.r.choice(self.COMMANDS)
        args = [self.r.choice(self.CASES)(name).encode()]
        for p in pattern:
            if p == "k":
                args.append(self.key(tags))
            elif p == "K":
                args += [self.key(tags) for _ in range(self.small_count())]
            elif p in "vf":
                args.append(self.value(tags) if p == "v" else self.hexs(self.r.randint(1, 6)))
            elif p == "V":
                args += [self.value(tags) for _ in range(self.r.randint(1, 5))]
            elif p == "n":
                args.append(self.number([0, 1, -1, 10, 3600, 100000], tags))
            elif p == "P":
                for _ in range(self.small_count()):
                    args += [self.key(tags), self.value(tags)]
            elif p == "F":
                for _ in range(self.r.randint(1, 4)):
                    args += [self.hexs(3), self.value(tags)]
            elif p == "S":
                for _ in range(self.r.randint(1, 4)):
                    args += [self.number([0, 1, -5, 100], tags), self.hexs(4)]
            elif p == "o":
                if self.r.random() < 0.3:
                    args += self.r.choice([[b"EX", b"100"], [b"PX", b"100000"], [b"NX"], [b"XX"], [b"GET"],
                                           [b"KEEPTTL"], [b"EX", b"-1"], [b"EX"]])
        if self.r.random() < 0.04:
            tags.add("arity")
            if len(args) > 1 and self.r.random() < 0.5:
                args.pop()
            else:
                args.append(self.hexs(2))
        return name.lower(), args

    def multibulk(self, args, tags):
        """Encodes `args`, possibly with one framing mutation."""
        head = b"*%d\r\n" % len(args)
        bulks = [[b"$%d\r\n" % len(a), a, b"\r\n"] for a in args]
        if self.r.random() < 0.30:
            kind = self.pick([(10, "count"), (4, "countoff"), (12, "bulk"), (5, "bulkoff"), (8, "crlf"),
                              (3, "type"), (2, "huge"), (2, "prefix"), (2, "empty"), (1, "nested")])
            tags.add(kind)
            n = len(args)
            if kind == "count":
                head = self.r.choice([b"*0%d\r\n", b"*00%d\r\n", b"*+%d\r\n", b"* %d\r\n", b"*%d \r\n",
                                      b"*%d\n", b"*%d\r\r\n"]) % n
                if self.r.random() < 0.2:
                    head = self.r.choice([b"*-0\r\n", b"*-1\r\n", b"*0\r\n", b"*\r\n", b"*x\r\n", b"*01\r\n"])
            elif kind == "countoff":
                head = b"*%d\r\n" % max(0, n + self.r.choice([-1, 1, 2]))
            elif kind == "bulk":
                i = self.r.randrange(n)
                length = len(args[i])
                bulks[i][0] = self.r.choice([b"$0%d\r\n", b"$00%d\r\n", b"$+%d\r\n", b"$ %d\r\n", b"$%d \r\n",
                                             b"$%d\n"]) % length
                if self.r.random() < 0.3:
                    bulks[i][0] = self.r.choice([b"$-0\r\n", b"$-1\r\n", b"$-2\r\n", b"$\r\n", b"$01\r\n"])
            elif kind == "bulkoff":
                i = self.r.randrange(n)
                bulks[i][0] = b"$%d\r\n" % max(0, len(args[i]) + self.r.choice([-2, -1, 1, 2]))
            elif kind == "crlf":
                i = self.r.randrange(n)
                slot = self.r.choice([0, 2])
                replacement = self.r.choice([b"\n", b"\r", b"", b"\r\r\n", b"\n\r", b"XY"])
                bulks[i][slot] = bulks[i][slot][:-2] + replacement if slot == 0 else replacement
            elif kind == "type":
                i = self.r.randrange(n)
                bulks[i][0] = self.r.choice([b"+", b":", b"*", b"-", b"%"]) + bulks[i][0][1:]
            elif kind == "huge":
                choice = self.r.choice([b"*2147483648\r\n", b"*99999999999\r\n", b"*1048577\r\n",
                                        b"*9223372036854775808\r\n"])
                if choice.startswith(b"*") and self.r.random() < 0.5:
                    head = choice
                else:
                    i = self.r.randrange(n)
                    bulks[i][0] = self.r.choice([b"$536870913\r\n", b"$9999999999\r\n", b"$2147483648\r\n",
                                                 b"$536870912\r\n"])
            elif kind == "prefix":
                # (A NUL makes Redis wait for more bytes, strchr again: rare.)
                head = (b"\x00" if self.r.random() < 0.03 else self.r.choice([b" ", b"\r\n", b"\n"])) + head
            elif kind == "empty":
                head = self.r.choice([b"*0\r\n", b"*-1\r\n"]) + head
            elif kind == "nested":
                head = b"*1\r\n" + head
        return head + b"".join(b"".join(parts) for parts in bulks)

    def inline(self, args, tags):
        tags.add("inline")
        words = []
        for a in args:
            if not a or any(c in a for c in b" \t\r\n\"'\\\x0b\x0c\x00") or self.r.random() < 0.1:
                escaped = b"".join(bytes([c]) if 0x20 < c < 0x7f and c not in b"\"\\" else b"\\x%02x" % c for c in a)
                words.append(b'"' + escaped + b'"')
            else:
                words.append(a)
        line = b" ".join(words)
        if self.r.random() < 0.25:
            kind = self.r.randrange(8)
            tags.add("inlinemut")
            if kind == 0:
                line += b' "unbalanced'
            elif kind == 1:
                line += b" 'a'b"
            elif kind == 2:
                line = line.replace(b" ", self.r.choice([b"\t", b"  ", b"\x0b", b" \r "]), 1)
            elif kind == 3:
                line += b' "\\x4g\\q\\"\\n"'
            elif kind == 4 and self.r.random() < 0.1:
                # Redis waits for more bytes on an inline line with a NUL (strchr): rare.
                tags.add("nul")
                line += b" a\x00b"
            elif kind == 5:
                target = self.r.choice([65533, 65534, 65535, 65536, 65537, 70000])
                tags.add("long")
                line = b"ECHO " + b"e" * max(0, target - 7)
            elif kind == 6:
                line = self.r.choice([b"", b"   ", b"\t"])
            else:
                line = b"'" + line + b"'"
        return line + (b"\r\n" if self.r.random() < 0.9 else b"\n")

    def case(self):
        while True:
            names, parts, tags = [], [], set()
            count = 1 if self.r.random() < 0.9 else self.r.randint(2, 4)
            for _ in range(count):
                name, args = self.arguments(tags)
                names.append(name)
                parts.append(self.inline(args, tags) if self.r.random() < 0.12 else self.multibulk(args, tags))
            data = b"".join(parts)
            if denied(data):
                continue
            label = "+".join(names) + ("[" + ",".join(sorted(tags)) + "]" if tags else "")
            return Case(data, count, label)


# ----------------------------------------------------------------------------------------------
# Protocol descriptions: sentinels, canary and observer requests, backend settings
# ----------------------------------------------------------------------------------------------

class MemcacheProto:
    name = "memcache"
    sentinel_requests = 3
    # Reply counts depend on the keys' state only for quiet meta commands; after Tern and the
    # reference saw different requests the lane moves to fresh keys.
    state_sensitive = True
    framer = staticmethod(mc_reply_end)
    is_error = staticmethod(mc_is_error)
    Gen = MemcacheGen

    @staticmethod
    def set_request(key, value):
        return b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value), b"STORED\r\n"

    @staticmethod
    def get_reply(keys_values):
        return b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in keys_values) + b"END\r\n"

    def get_request(self, keys_values):
        return b"get %s\r\n" % b" ".join(k for k, _ in keys_values), self.get_reply(keys_values)

    def holds(self, port, keys):
        """Which of `keys` the server on `port` holds (asked directly)."""
        sock = connect(port)
        try:
            sock.sendall(b"".join(b"get %s\r\n" % k for k in keys))
            replies = read_replies(sock, mc_reply_end, len(keys))
        finally:
            sock.close()
        return {k for k, r in zip(keys, replies) if r.startswith(b"VALUE ")}

    def sentinel(self, pair):
        """The sentinel's bytes, the exact reply expected for its first request, a test for the
        reply that ends a case, and the exact reply of a last request after it (or None).
        `get` of one key on each backend passes through both shared backend connections;
        `stats` is answered by Tern itself (its own STAT lines, as memcached answers with its
        own), so it arrives even when the backends fail (no case sends `stats`: it is on the
        deny-list). Not `stats sizes`: Tern answers a per-server group with an empty `END`,
        which no test can tell from a case's reply. The closing `mn` is there for memcached
        1.6.18, which drops the reply to a `stats` or `version` when the next command is a get
        with a key over 250 bytes."""
        request, reply = self.get_request(pair)
        return request + b"stats\r\nmn\r\n", reply, is_stats_reply, b"MN\r\n"

    def settings(self, port):
        sock = connect(port)
        try:
            sock.sendall(b"stats settings\r\n")
            reply = read_replies(sock, mc_reply_end, 1)
        finally:
            sock.close()
        lines = reply[0].decode("latin-1").splitlines() if reply else []
        return {line.split()[1]: " ".join(line.split()[2:]) for line in lines if line.startswith("STAT ")}


class RedisProto:
    name = "redis"
    sentinel_requests = 2
    state_sensitive = False
    framer = staticmethod(resp_reply_end)
    is_error = staticmethod(resp_is_error)
    Gen = RedisGen
    SETTINGS = ["maxmemory", "maxmemory-policy", "save", "appendonly", "dir", "dbfilename", "requirepass",
                "maxclients", "proto-max-bulk-len", "client-query-buffer-limit", "loglevel", "timeout",
                "databases", "replica-read-only", "protected-mode", "port", "bind"]

    @staticmethod
    def encode(*args):
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

    def set_request(self, key, value):
        return self.encode(b"SET", key, value), b"+OK\r\n"

    def get_request(self, keys_values):
        if len(keys_values) == 1:
            k, v = keys_values[0]
            return self.encode(b"GET", k), b"$%d\r\n%s\r\n" % (len(v), v)
        return (self.encode(b"MGET", *[k for k, _ in keys_values]),
                b"*%d\r\n" % len(keys_values) + b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for _, v in keys_values))

    def holds(self, port, keys):
        sock = connect(port)
        try:
            sock.sendall(b"".join(self.encode(b"EXISTS", k) for k in keys))
            replies = read_replies(sock, resp_reply_end, len(keys))
        finally:
            sock.close()
        return {k for k, r in zip(keys, replies) if r == b":1\r\n"}

    def sentinel(self, pair):
        """MGET of one key on each backend, then ECHO (answered by Tern itself) to end the case."""
        request, reply = self.get_request(pair)
        token = pair[0][1] + b"E"
        echo_reply = b"$%d\r\n%s\r\n" % (len(token), token)
        return request + self.encode(b"ECHO", token), reply, echo_reply.__eq__, None

    def settings(self, port):
        sock = connect(port)
        try:
            sock.sendall(b"".join(self.encode(b"CONFIG", b"GET", s.encode()) for s in self.SETTINGS))
            replies = read_replies(sock, resp_reply_end, len(self.SETTINGS))
        finally:
            sock.close()
        return {s: r.decode("latin-1") for s, r in zip(self.SETTINGS, replies)}


PROTOCOLS = {"memcache": MemcacheProto, "redis": RedisProto}


# ----------------------------------------------------------------------------------------------
# Lanes: one connection through Tern and one to the reference, fed the same batches
# ----------------------------------------------------------------------------------------------

class Side:
    """One non-blocking connection and the replies it got for the current batch, split into
    segments at the sentinel's terminator reply."""

    def __init__(self, name, port, proto, selector, sentinel, idle):
        self.name = name
        self.idle = idle                # seconds of silence after which the side is hung
        self.port = port
        self.framer = proto.framer
        self.selector = selector
        _, self.pre, self.is_term, self.tail = sentinel
        self.sock = None
        self.reset()

    def reset(self):
        self.buf = bytearray()
        self.pos = 0
        self.out = bytearray()
        self.segments = []          # (replies, status, note); status: ok | corrupt
        self.reset_by_peer = False
        self.want_tail = False
        self.active = time.monotonic()  # the last time bytes moved
        self.current = []
        self.closed = False
        self.framing = None

    def connect(self):
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ, self)
        self.reset()

    def close(self):
        if self.sock is not None:
            try:
                self.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()
            self.sock = None

    def send(self, data):
        self.out += data
        self.flush()

    def flush(self):
        if self.closed or self.sock is None:
            return
        while self.out:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                self.out.clear()
                return
            del self.out[:n]
            self.active = time.monotonic()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        self.selector.modify(self.sock, events, self)

    def on_readable(self):
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except BlockingIOError:
                break
            except OSError:
                self.reset_by_peer = True
                data = b""
            if not data:
                self.closed = True
                try:
                    self.selector.unregister(self.sock)
                except (KeyError, ValueError):
                    pass
                break
            self.buf += data
            self.active = time.monotonic()
            if len(data) < (1 << 18):
                break
        self.parse()

    def parse(self):
        if self.framing is not None:
            return
        buf = self.buf
        while True:
            try:
                end = self.framer(buf, self.pos)
            except Framing as error:
                self.framing = "%s in %s" % (error, show(bytes(buf[self.pos:self.pos + 300]), 400))
                return
            if end < 0:
                break
            reply = bytes(buf[self.pos:end])
            self.pos = end
            if self.want_tail:
                self.want_tail = False
                if reply == self.tail:
                    continue
            if self.is_term(reply):
                # The reply before the terminator is the sentinel's first one.
                if self.current and self.current[-1] == self.pre:
                    self.current.pop()
                    self.segments.append((self.current, "ok", None))
                else:
                    wrong = self.current.pop() if self.current else b""
                    self.segments.append((self.current, "corrupt", wrong))
                self.current = []
                self.want_tail = self.tail is not None
            else:
                self.current.append(reply)
        if self.pos > (1 << 20):
            del buf[:self.pos]
            self.pos = 0

    def finished(self, expected):
        return (self.closed or self.framing is not None
                or (len(self.segments) >= expected and not self.want_tail))

    def silent(self, now):
        return not self.out and now - self.active > self.idle

    def leftover(self):
        return len(self.buf) - self.pos


class Lane:
    def __init__(self, index, proto, gen, tern_port, ref_port, selector, sentinel):
        self.index = index
        self.proto = proto
        self.gen = gen
        self.sentinel = sentinel
        self.tern = Side("tern", tern_port, proto, selector, sentinel, TERN_IDLE)
        self.ref = Side("ref", ref_port, proto, selector, sentinel, REF_IDLE) if ref_port else None
        self.cases = None
        self.deadline = 0.0
        self.fresh = True               # open new connections before the next batch
        self.pending = collections.deque()  # cases to run (again) before new ones
        self.single = 0                 # how many of the pending cases run alone

    def sides(self):
        return [self.tern] + ([self.ref] if self.ref else [])

    def requeue(self, cases, single):
        self.pending.extendleft(reversed(cases))
        self.single = single
        self.fresh = True

    def next_cases(self, batch, new_allowed):
        """Cases for the next batch (pending ones first) and how many of them are new."""
        if self.single and self.pending:
            # Alone on fresh connections: a close is then this case's, and no reset can
            # discard the replies of another case.
            self.single -= 1
            self.fresh = True
            return [self.pending.popleft()], 0
        cases = []
        while self.pending and len(cases) < batch:
            cases.append(self.pending.popleft())
        new = max(0, min(batch - len(cases), new_allowed))
        cases += [self.gen.case() for _ in range(new)]
        return cases, new

    def start(self, cases, now):
        if self.fresh:
            for side in self.sides():
                side.connect()
            self.fresh = False
        else:
            for side in self.sides():
                side.reset()
        self.cases = cases
        payload = b"".join(c.data + self.sentinel[0] for c in cases)
        self.deadline = now + BATCH_DEADLINE + len(payload) / 50e6
        for side in self.sides():
            side.send(payload)

    def finished(self, now):
        """Every side has answered every case, closed, or stayed silent too long."""
        n = len(self.cases)
        return now > self.deadline or all(side.finished(n) or side.silent(now) for side in self.sides())


# ----------------------------------------------------------------------------------------------
# Canary
# ----------------------------------------------------------------------------------------------

class Canary(threading.Thread):
    """Sets and reads its own keys through Tern and checks every reply byte for byte."""

    def __init__(self, proto, port, ident, seed, stop, pause):
        super().__init__(daemon=True, name="canary-%d" % ident)
        self.pause = pause
        self.proto = proto
        self.port = port
        self.number = ident
        self.rng = random.Random("canary/%s/%d" % (seed, ident))
        self.stop_event = stop
        self.ok = 0
        self.wrong = 0
        self.failures = []          # the first few, in detail
        self.lock = threading.Lock()

    def run(self):
        sock = None
        previous = None
        seq = 0
        while not self.stop_event.is_set():
            try:
                if sock is None:
                    sock = connect(self.port)
                seq += 1
                keys = [b"canary:%d:%d" % (self.number, self.rng.randrange(10000)) for _ in range(2)]
                if keys[0] == keys[1] or (previous and previous[0] in keys):
                    continue
                values = [b"cv%d.%d.%d.%x" % (self.number, seq, i, self.rng.getrandbits(40)) for i in range(2)]
                requests, expected, ops = [], [], []
                for k, v in zip(keys, values):
                    request, reply = self.proto.set_request(k, v)
                    requests.append(request)
                    expected.append(reply)
                    ops.append("set %s" % k.decode())
                reads = [[(keys[0], values[0])], [(keys[1], values[1])], list(zip(keys, values))]
                if previous:
                    reads.append([previous])
                for pairs in reads:
                    request, reply = self.proto.get_request(pairs)
                    requests.append(request)
                    expected.append(reply)
                    ops.append("get " + " ".join(k.decode() for k, _ in pairs))
                sock.sendall(b"".join(requests))
                ok, got, why = read_expected(sock, b"".join(expected), self.proto.framer, CANARY_TIMEOUT)
                if ok:
                    with self.lock:
                        self.ok += len(expected)
                    previous = (keys[1], values[1])
                    if self.pause:
                        self.stop_event.wait(self.pause)
                    continue
                self.record(ops, expected, got, why)
                previous = None
                sock.close()
                sock = None
            except OSError as error:
                self.record(["(connection)"], [b"(a connection)"], b"", "connection error: %s" % error)
                previous = None
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.1)
        if sock is not None:
            sock.close()

    def record(self, ops, expected, got, why):
        # Count per reply: the ones that arrived intact in order are fine.
        good = 0
        offset = 0
        for reply in expected:
            if got[offset:offset + len(reply)] == reply:
                good += 1
                offset += len(reply)
            else:
                break
        with self.lock:
            self.ok += good
            self.wrong += len(expected) - good
            if len(self.failures) < 10:
                self.failures.append({
                    "time": time.time(), "why": why, "ops": ops[good:],
                    "expected": b"".join(expected[good:]), "got": got[offset:],
                })


# ----------------------------------------------------------------------------------------------
# Reporting helpers
# ----------------------------------------------------------------------------------------------

RUN_RE = re.compile(rb"(.{1,24}?)\1{7,}", re.DOTALL)


def show(data, limit=400):
    """The bytes as a Python expression, runs of 8 or more repeats folded:
    b'gat 0' + b' k' * 9000 + b'\\r\\n'."""
    pieces = []
    last = 0
    if len(data) > 64:
        for match in RUN_RE.finditer(data):
            unit = match.group(1)
            if match.start() > last:
                pieces.append(repr(data[last:match.start()]))
            pieces.append("%r * %d" % (unit, len(match.group(0)) // len(unit)))
            last = match.end()
    if last < len(data) or not pieces:
        pieces.append(repr(data[last:]))
    out = " + ".join(pieces)
    if len(out) > limit:
        out = out[:limit] + "...(%d bytes)" % len(data)
    return out


def tags_of(label):
    """The mutation tags of a case label such as 'ms+get[b64>250,flags>16]'."""
    return frozenset(label.split("[", 1)[1].rstrip("]").split(",")) if "[" in label else frozenset()


def show_replies(replies, limit=300):
    return show(b"".join(replies), limit) if replies else "(none)"


# ----------------------------------------------------------------------------------------------
# The fuzzing run for one protocol
# ----------------------------------------------------------------------------------------------

class Run:
    def __init__(self, args, proto, tern_port, backend_ports, ref_port, tern_process, processes):
        self.args = args
        self.proto = proto
        self.tern_port = tern_port
        self.backend_ports = backend_ports
        self.ref_port = ref_port
        self.tern_process = tern_process
        self.processes = processes
        self.cases = 0
        self.requests = 0
        self.closes = 0
        self.tolerated = collections.Counter()
        self.kinds = collections.Counter()
        self.collateral = collections.Counter()
        self.groups = {}            # (kind, label) -> {count, example, time, collateral}
        self.last_disturbance = -1e9
        self.failures = []          # fatal problems (strings)
        self.confirmed = []
        self.confirm_tried = 0
        self.confirm_skipped = 0
        self.canaries = []
        self.elapsed = 0.0

    # Setup ---------------------------------------------------------------------------------

    def place(self, prefix, count):
        """Keys set through Tern (and on the reference), one per backend, `count` pairs:
        [((key_on_a, value), (key_on_b, value))]."""
        pairs = []

        def name(i, j):
            # Spread-out suffixes: fnv1a_64 (32-bit state) clusters keys that differ at the end.
            return b"%s:%d:%08x" % (prefix, i, (j * 2654435761 + i * 40503) % (1 << 32))
        candidates = [name(i, j) for i in range(count) for j in range(32)]
        values = {k: k.replace(b":", b".") + b"v" for k in candidates}
        sock = connect(self.tern_port)
        try:
            requests, replies = zip(*[self.proto.set_request(k, values[k]) for k in candidates])
            sock.sendall(b"".join(requests))
            got = read_replies(sock, self.proto.framer, len(candidates))
            if got != list(replies):
                raise RuntimeError("setting up keys through Tern failed: %r" % got[:3])
        finally:
            sock.close()
        on_a = self.proto.holds(self.backend_ports[0], candidates)
        on_b = self.proto.holds(self.backend_ports[1], candidates)
        for i in range(count):
            mine = [name(i, j) for j in range(32)]
            a = next((k for k in mine if k in on_a), None)
            b = next((k for k in mine if k in on_b), None)
            if a is None or b is None:
                raise RuntimeError("no key of %s:%d on each backend" % (prefix.decode(), i))
            pairs.append(((a, values[a]), (b, values[b])))
        if self.ref_port:
            sock = connect(self.ref_port)
            try:
                flat = [kv for pair in pairs for kv in pair]
                requests, replies = zip(*[self.proto.set_request(k, v) for k, v in flat])
                sock.sendall(b"".join(requests))
                if read_replies(sock, self.proto.framer, len(flat)) != list(replies):
                    raise RuntimeError("setting up keys on the reference failed")
            finally:
                sock.close()
        return pairs

    # Judging -------------------------------------------------------------------------------

    def finding(self, now, lane, kind, case, tern, ref, note=""):
        collateral = kind in DISTURBANCE and now - self.last_disturbance < COLLATERAL_WINDOW
        if kind in DISTURBANCE and not collateral:
            self.last_disturbance = now
        group_kind = kind + (" (collateral)" if collateral else "")
        if collateral:
            self.collateral[kind] += 1
        else:
            self.kinds[kind] += 1
        key = (group_kind, case.label)
        group = self.groups.get(key)
        record = {"lane": lane.index, "data": case.data, "tern": tern, "ref": ref, "note": note,
                  "time": now}
        if group is None:
            self.groups[key] = {"count": 1, "example": record, "first": now, "collateral": collateral}
        else:
            group["count"] += 1
            if len(case.data) < len(group["example"]["data"]):
                group["example"] = record
        if self.args.findings and not collateral:
            with open(self.args.findings, "a") as f:
                f.write(json.dumps({"protocol": self.proto.name, "kind": group_kind, "label": case.label,
                                    "data": case.data.decode("latin-1"), "tern": [r.decode("latin-1") for r in tern],
                                    "ref": [r.decode("latin-1") for r in ref or []], "note": note}) + "\n")

    def judge_batch(self, lane, now):
        """Splits both sides' replies per case and checks them. Cases that did not run
        properly go back to the lane's queue; lane.fresh says whether to reconnect."""
        cases = lane.cases
        tern, ref = lane.tern, lane.ref
        for side in lane.sides():
            side.parse()
        diverged = False
        for i, case in enumerate(cases):
            t = self.outcome(tern, i)
            r = self.outcome(ref, i) if ref else None
            if t is None or (ref and r is None):
                break
            both_closed = t[1] == "closed" and r is not None and r[1] == "closed"
            if (t[1] == "closed" or (r and r[1] == "closed")) and len(cases) > 1 and not both_closed:
                # A server that closes with unread bytes sends a reset, which can discard
                # replies still in flight, so the close may belong to a later case: judge this
                # one again alone on fresh connections. (When both sides close here, they agree.)
                lane.requeue(cases[i:], single=1)
                break
            self.cases += 1
            self.requests += case.requests + self.proto.sentinel_requests
            t_replies, t_status, t_note = t
            bad = [rep for rep in t_replies if BACKEND_FAILURE_RE.search(rep)]
            if bad:
                self.finding(now, lane, "backend-error", case, t_replies, r[0] if r else None,
                             bad[0][:100].decode("latin-1").strip())
            if (t_status == "framing" and self.proto.name == "memcache" and case.data[:1] == b"\x80"
                    and "\\x81" in (t_note or "") and r and r[1] not in ("ok", "corrupt")):
                # A case that starts a connection with 0x80 chose the binary protocol, on Tern
                # and on memcached alike (memcached did not answer it in text either; documented).
                self.tolerated["binary-chosen"] += 1
            elif t_status == "framing":
                self.finding(now, lane, "tern-framing", case, t_replies, r[0] if r else None, t_note)
            elif t_status == "corrupt":
                if not (r and r[1] == "corrupt"):
                    self.finding(now, lane, "sentinel-corrupt", case, t_replies, r[0] if r else None,
                                 "sentinel's reply: " + show(t_note or b"", 200))
            elif t_status == "closed":
                if both_closed and len(cases) > 1:
                    self.closes += 1            # replies before a reset may be lost: no check
                elif t_note == "partial" or not t_replies or not self.proto.is_error(t_replies[-1]):
                    self.finding(now, lane, "silent-close", case, t_replies, r[0] if r else None, t_note)
                else:
                    self.closes += 1
            if r is not None:
                self.compare(now, lane, case, t, r)
                diverged = diverged or t_status != r[1] or len(t_replies) != len(r[0])
            if t_status not in ("ok", "corrupt") or (r is not None and r[1] not in ("ok", "corrupt")):
                # The connections cannot go on; the cases after this one never ran properly.
                lane.requeue(cases[i + 1:], single=0)
                break
        else:
            # Anything after the last sentinel is a reply nobody asked for.
            if tern.current or tern.leftover() or len(tern.segments) > len(cases):
                extra = [r for replies, _, _ in tern.segments[len(cases):] for r in replies]
                extra += tern.current + ([bytes(tern.buf[tern.pos:])] if tern.leftover() else [])
                self.finding(now, lane, "trailing", cases[-1], extra, None,
                             "after the last sentinel (%d sentinel replies for %d sentinels)"
                             % (len(tern.segments), len(cases)))
                lane.fresh = True
            if ref and (ref.current or ref.leftover()):
                lane.fresh = True
        if diverged and self.proto.state_sensitive:
            lane.gen.epoch += 1                 # Tern and the reference may hold different items

    def outcome(self, side, i):
        """(replies, status, note) of case i on `side`: ok/corrupt (a sentinel ended it),
        closed, hang, framing; None when the side never got to case i."""
        if i < len(side.segments):
            replies, status, note = side.segments[i]
            return replies, status, note
        if i > len(side.segments):
            return None
        if side.framing is not None:
            return side.current, "framing", side.framing
        if side.closed:
            return side.current, "closed", "partial" if side.leftover() else (
                "reset" if side.reset_by_peer else "")
        return side.current, "hang", ""

    def tern_refused(self, t_replies, r_replies):
        """Whether the first place where Tern's replies part from the server's is an error
        that Tern made itself: an error reply where the server answered otherwise (or had
        stopped answering), with no backend failure anywhere in the case. Had Tern forwarded
        the request instead, the backend would have answered like the reference or failed."""
        if any(BACKEND_FAILURE_RE.search(x) for x in t_replies):
            return False
        is_error = self.proto.is_error
        for i, reply in enumerate(t_replies):
            if i >= len(r_replies) or is_error(reply) != is_error(r_replies[i]):
                return is_error(reply)
        return False

    def own_error(self, t_replies):
        """An error of Tern's own among its replies, with no backend failure in the case."""
        return (any(self.proto.is_error(x) for x in t_replies)
                and not any(BACKEND_FAILURE_RE.search(x) for x in t_replies))

    def silent_refusal(self, case, t_replies, r_replies):
        """A case with a storage line ending in `noreply` whose key Tern refuses (over 250
        bytes, or a NUL in the line: memcached would cut it there), where Tern's replies are
        the server's less some of its errors: Tern refuses that line
        without a word, as memcached would, and drops (or waits for) its data block
        (documented), where memcached reads that block as a command line."""
        # Tern's replies are the server's, in order, less errors only (the server's answers to
        # the data block it read as commands).
        is_error = self.proto.is_error
        position = 0
        for reply in r_replies:
            if position < len(t_replies) and is_error(t_replies[position]) == is_error(reply):
                position += 1
            elif not is_error(reply):
                return False
        if position < len(t_replies):
            return False
        for line in case.data.split(b"\n"):
            line = line.rstrip(b"\r")
            tokens = [token for token in line.split(b" ") if token]
            if (len(tokens) >= 6 and tokens[-1] == b"noreply"
                    and tokens[0] in (b"set", b"add", b"replace", b"append", b"prepend", b"cas")
                    and (len(tokens[1]) > 250 or b"\x00" in line)):
                return True
        return False

    def compare(self, now, lane, case, t, r):
        """The differential check of one case: reply counts and how each side ended."""
        t_replies, t_status, _ = t
        r_replies, r_status, _ = r
        t_end = "ok" if t_status in ("ok", "corrupt") else t_status
        r_end = "ok" if r_status in ("ok", "corrupt") else r_status
        if r_end == "framing":
            self.tolerated["reference-unframed"] += 1
            return
        if t_end == "framing":
            return
        if t_end == r_end:
            if t_end == "ok" and t_status == "ok" and r_status == "ok":
                if len(t_replies) > len(r_replies):
                    if self.tern_refused(t_replies, r_replies):
                        # Typically a line Tern refuses whose data block then reads as a command.
                        self.tolerated["more-replies-tern-refused"] += 1
                    else:
                        self.finding(now, lane, "more-replies", case, t_replies, r_replies)
                elif len(t_replies) < len(r_replies):
                    if any(self.proto.is_error(x) for x in t_replies):
                        self.tolerated["fewer-replies-with-error"] += 1
                    elif self.silent_refusal(case, t_replies, r_replies):
                        self.tolerated["tern-silent-refusal"] += 1
                    else:
                        self.finding(now, lane, "fewer-replies", case, t_replies, r_replies)
            elif t_end != "ok":
                self.tolerated["both-" + t_end] += 1
            return
        if t_end == "ok" and r_end == "closed":
            if self.tern_refused(t_replies, r_replies):
                # The server went on to choke on the rest (a data block read as a line, say).
                self.tolerated["ref-closed-tern-refused"] += 1
            elif (len(r_replies) < len(t_replies) and self.own_error(t_replies[len(r_replies):])
                  and all(self.proto.is_error(a) == self.proto.is_error(b) for a, b in zip(t_replies, r_replies))):
                # memcached closed on a line it could not read (typically the data block of a
                # line it refused without reading it, which Tern drops: documented) and its
                # replies queued before the close never came (dropped with the connection, or
                # discarded by a reset): past those that came, only Tern's own refusal can be
                # told. The canaries and the observer replay check that nothing else was hit.
                self.tolerated["ref-reset-tern-refused"] += 1
            elif self.silent_refusal(case, t_replies, r_replies):
                self.tolerated["tern-silent-refusal"] += 1
            else:
                self.finding(now, lane, "lenient-close", case, t_replies, r_replies)
        elif t_end == "ok" and r_end == "hang":
            # A hung memcached may also hold back the replies to the requests before the one
            # it waits on, so any error of Tern's own counts here. Had Tern forwarded what the
            # server waits on, Tern would have timed out on its backend.
            if (any(self.proto.is_error(x) for x in t_replies)
                    and not any(BACKEND_FAILURE_RE.search(x) for x in t_replies)):
                self.tolerated["ref-hang-tern-refused"] += 1
            else:
                self.finding(now, lane, "ref-hang", case, t_replies, r_replies)
        elif t_end == "hang" and r_end == "ok":
            if (t_replies and self.proto.is_error(t_replies[-1])
                    and not any(BACKEND_FAILURE_RE.search(x) for x in t_replies)):
                # Tern refused a storage command and swallows its declared data block as it
                # arrives (documented), where the server refused without swallowing.
                self.tolerated["tern-swallows-after-refusal"] += 1
            elif self.silent_refusal(case, t_replies, r_replies):
                self.tolerated["tern-silent-refusal"] += 1
            else:
                self.finding(now, lane, "tern-hang", case, t_replies, r_replies)
        elif t_end == "closed":
            self.tolerated["tern-stricter-close"] += 1
        else:
            self.tolerated["tern-%s-ref-%s" % (t_end, r_end)] += 1

    # Main loop -----------------------------------------------------------------------------

    def fuzz(self):
        args = self.args
        selector = selectors.DefaultSelector()
        pairs = self.place(SENTINEL_MARK, args.lanes)
        self.observer_pairs = self.place(b"OBSERVER", 1)[0]
        lanes = []
        for i in range(args.lanes):
            sentinel = self.proto.sentinel(pairs[i])
            gen = self.proto.Gen(args.seed, i)
            lanes.append(Lane(i, self.proto, gen, self.tern_port, self.ref_port, selector, sentinel))
        stop = threading.Event()
        canaries = [Canary(self.proto, self.tern_port, c, args.seed, stop, args.canary_pause)
                    for c in range(args.canaries)]
        for canary in canaries:
            canary.start()
        started = 0
        begin = time.monotonic()
        end_time = begin + args.seconds
        last_report = begin
        busy = set()
        try:
            while True:
                now = time.monotonic()
                budget = started < args.requests and now < end_time and not self.failures
                for lane in lanes:
                    if lane in busy and lane.finished(now):
                        busy.discard(lane)
                        self.judge_batch(lane, now)
                        if lane.fresh:
                            for side in lane.sides():
                                side.close()
                    if lane not in busy and (budget or (lane.pending and now < end_time and not self.failures)):
                        cases, new = lane.next_cases(args.batch, args.requests - started if budget else 0)
                        if cases:
                            lane.start(cases, now)
                            started += new
                            busy.add(lane)
                            budget = budget and started < args.requests
                if not busy and not budget:
                    break
                for key, mask in selector.select(0.02):
                    side = key.data
                    if mask & selectors.EVENT_WRITE:
                        side.flush()
                    if mask & selectors.EVENT_READ:
                        side.on_readable()
                if now - last_report >= 1.0:
                    last_report = now
                    if self.tern_process.poll() is not None:
                        self.failures.append("Tern exited with status %s during the run:\n%s" % (
                            self.tern_process.returncode, self.processes.log_tail("tern")))
                    if args.progress:
                        sys.stderr.write("\r%s: %d cases, %.0f/s, mismatches %d, canary wrong %d   " % (
                            self.proto.name, self.cases, self.cases / max(1e-9, now - begin),
                            sum(self.kinds.values()), sum(c.wrong for c in canaries)))
        finally:
            self.elapsed = time.monotonic() - begin
            stop.set()
            for canary in canaries:
                canary.join(timeout=CANARY_TIMEOUT + 5)
            for lane in lanes:
                for side in lane.sides():
                    side.close()
            selector.close()
            if args.progress:
                sys.stderr.write("\n")
        self.canaries = canaries
        self.lane_sentinels = {lane.index: lane.sentinel for lane in lanes}

    # Confirmation: replay suspects alone, with an observer behind them ---------------------

    def observer_requests(self, seq):
        (ka, _), (kb, _) = self.observer_pairs
        values = [b"obs.%d.%d" % (seq, i) for i in range(2)]
        requests, expected = [], []
        for k, v in zip((ka, kb), values):
            request, reply = self.proto.set_request(k, v)
            requests.append(request)
            expected.append(reply)
        for pairs in ([(ka, values[0])], [(kb, values[1])], [(ka, values[0]), (kb, values[1])]):
            request, reply = self.proto.get_request(pairs)
            requests.append(request)
            expected.append(reply)
        return b"".join(requests), b"".join(expected)

    def healthy(self, timeout=12.0):
        """Waits until a fresh connection's observer requests get exact answers."""
        deadline = time.monotonic() + timeout
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            try:
                sock = connect(self.tern_port)
                try:
                    request, expected = self.observer_requests(10 ** 6 + seq)
                    sock.sendall(request)
                    ok, _, _ = read_expected(sock, expected, self.proto.framer, 3)
                finally:
                    sock.close()
                if ok:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    PROBE_ORDERS = ("case-first", "case-first", "observer-first", "case-first", "case-sleep-observer")

    def probe(self, data, sentinel, seq=0, orders=PROBE_ORDERS):
        """Replays `data` with observers; returns evidence (a string) when another client was
        affected, else None. The observer's requests must be queued on the shared backend
        connections right behind the case's, which depends on the order Tern reads the two
        connections in: several orderings are tried."""
        for order in orders:
            if not self.healthy():
                return "Tern does not answer correctly even before the case (backends still broken?)"
            seq += 1
            a = connect(self.tern_port)
            b = connect(self.tern_port)
            try:
                observe, expected = self.observer_requests(seq)
                if order == "observer-first":
                    b.sendall(observe)
                    a.sendall(data + sentinel[0])
                else:
                    a.sendall(data + sentinel[0])
                    if order == "case-sleep-observer":
                        time.sleep(0.005)
                    b.sendall(observe)
                ok, got, why = read_expected(b, expected, self.proto.framer, CANARY_TIMEOUT)
                if not ok:
                    return "observer (%s): %s; expected %s, got %s" % (order, why, show(expected, 300), show(got, 300))
                drain_case(a, self.proto.framer, sentinel[2], 0.3)     # let the case finish
                observe, expected = self.observer_requests(seq + 1000)
                b.sendall(observe)
                ok, got, why = read_expected(b, expected, self.proto.framer, CANARY_TIMEOUT)
                if not ok:
                    return "observer after the case (%s): %s; expected %s, got %s" % (
                        order, why, show(expected, 300), show(got, 300))
            except OSError as error:
                return "observer connection failed: %s" % error
            finally:
                a.close()
                b.close()
        return None

    def minimize(self, data, sentinel, deadline):
        """Greedy shrinking while the break still reproduces: drop whole lines; shrink data
        lines together with the byte count that declares them; drop chunks of space-separated
        tokens; halve long tokens. Returns the smallest case found and its evidence."""
        found = [data, None]

        def still(candidate_lines):
            candidate = b"".join(candidate_lines)
            if time.monotonic() >= deadline or not candidate.endswith(b"\n") or denied(candidate):
                return False
            evidence = self.probe(candidate, sentinel, orders=("case-first", "case-first", "observer-first"))
            if evidence is None or evidence.startswith("Tern does not answer"):
                return False
            found[:] = [candidate, evidence]
            return True

        def split(line):
            ending = b"\r\n" if line.endswith(b"\r\n") else (b"\n" if line.endswith(b"\n") else b"")
            return line[:len(line) - len(ending)], ending

        lines = [line for line in re.split(rb"(?<=\n)", data) if line]
        # Whole lines.
        i = len(lines) - 1
        while i >= 0 and len(lines) > 1 and time.monotonic() < deadline:
            if still(lines[:i] + lines[i + 1:]):
                lines = lines[:i] + lines[i + 1:]
            i -= 1
        # Data lines, halved with the token on the line before that gives their length.
        for i in range(len(lines) - 1):
            content, ending = split(lines[i + 1])
            head, head_ending = split(lines[i])
            tokens = head.split(b" ")
            positions = [j for j, t in enumerate(tokens) if j > 0 and t == b"%d" % len(content)]
            for j in positions:
                while len(content) > 1 and time.monotonic() < deadline:
                    shorter = content[:len(content) // 2]
                    trial = tokens[:j] + [b"%d" % len(shorter)] + tokens[j + 1:]
                    candidate = lines[:i] + [b" ".join(trial) + head_ending, shorter + ending] + lines[i + 2:]
                    if not still(candidate):
                        break
                    lines, tokens, content = candidate, trial, shorter
        # Chunks of space-separated tokens of each line, halving the chunk size, then long
        # tokens halved.
        for li in range(len(lines)):
            body, ending = split(lines[li])
            tokens = body.split(b" ")
            chunk = max(1, len(tokens) // 2)
            while chunk >= 1 and time.monotonic() < deadline:
                start = 1
                while start < len(tokens) and time.monotonic() < deadline:
                    trial = tokens[:start] + tokens[start + chunk:]
                    candidate = lines[:li] + [b" ".join(trial) + ending] + lines[li + 1:]
                    if still(candidate):
                        tokens, lines = trial, candidate
                    else:
                        start += chunk
                chunk //= 2
            for j in range(len(tokens)):
                while len(tokens[j]) > 16 and time.monotonic() < deadline:
                    trial = tokens[:j] + [tokens[j][:len(tokens[j]) // 2]] + tokens[j + 1:]
                    candidate = lines[:li] + [b" ".join(trial) + ending] + lines[li + 1:]
                    if not still(candidate):
                        break
                    tokens, lines = trial, candidate
        return found[0], found[1]

    def confirm(self):
        args = self.args
        suspects = []
        seen = set()

        def order(item):
            # Non-collateral first, the kinds that the case itself shows first (the others may
            # be effects of another lane's case), then cases of one request, with few tags,
            # small, early.
            (kind, label), group = item
            rank = SUSPECT_RANK.get(kind.replace(" (collateral)", ""), 3)
            return (group["collateral"], rank, label.count("+"), len(tags_of(label)),
                    len(group["example"]["data"]), group["first"])
        for key, group in sorted(self.groups.items(), key=order):
            kind = key[0].replace(" (collateral)", "")
            data = group["example"]["data"]
            if kind not in INTERESTING or data in seen:
                continue
            seen.add(data)
            suspects.append((key, group))
        deadline = time.monotonic() + args.confirm_seconds
        tried = 0
        for key, group in suspects:
            if time.monotonic() > deadline or tried >= args.confirm_max:
                break
            # A case with every feature of an already confirmed one most likely breaks
            # isolation the same way: skip it and spend the time on other suspects.
            tags = tags_of(key[1])
            if any(c["tags"] and c["tags"] <= tags for c in self.confirmed):
                self.confirm_skipped += 1
                continue
            tried += 1
            example = group["example"]
            evidence = self.probe(example["data"], self.lane_sentinels[example["lane"]])
            if evidence and evidence.startswith("Tern does not answer"):
                self.failures.append("confirmation stopped: " + evidence)
                break
            if evidence:
                self.confirmed.append({"kind": key[0], "label": key[1], "data": example["data"],
                                       "evidence": evidence, "lane": example["lane"], "tags": tags})
        self.confirm_tried = tried
        # Shrink the first few confirmed cases (smallest first).
        self.confirmed.sort(key=lambda c: len(c["data"]))
        for item in self.confirmed[:args.minimize_max]:
            if args.minimize_seconds <= 0:
                break
            sentinel = self.lane_sentinels[item["lane"]]
            small, evidence = self.minimize(item["data"], sentinel, time.monotonic() + args.minimize_seconds)
            item["minimized"] = small
            item["minimized_evidence"] = evidence or item["evidence"]

    # Final checks and report ----------------------------------------------------------------

    def report(self, settings_before):
        args = self.args
        print()
        for port, before in zip(self.backend_ports, settings_before):
            try:
                after = self.proto.settings(port)
            except OSError as error:
                self.failures.append("backend on port %d does not answer: %s" % (port, error))
                continue
            changed = {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
            if changed:
                self.failures.append("backend on port %d changed its settings: %r" % (port, changed))
            if isinstance(self.proto, MemcacheProto) and after.get("maxbytes") != str(MEMCACHED_MAXBYTES):
                self.failures.append("memcached on port %d: maxbytes %r" % (port, after.get("maxbytes")))
        if self.tern_process.poll() is not None:
            self.failures.append("Tern exited with status %s:\n%s" % (self.tern_process.returncode,
                                                                      self.processes.log_tail("tern")))
        elif not self.healthy(timeout=10):
            self.failures.append("Tern no longer answers correctly at the end")
        ok = sum(c.ok for c in self.canaries)
        wrong = sum(c.wrong for c in self.canaries)
        mismatches = sum(self.kinds.values())
        rate = self.cases / max(1e-9, self.elapsed)
        print("differential: %s: %d cases, %d requests, canary %d ok, %d wrong, closes %d, mismatches %d"
              % (self.proto.name, self.cases, self.requests, ok, wrong, self.closes, mismatches))
        print("  %.1f s, %.0f cases/s, %.0f requests/s; seed %s, %d lanes x %d cases per batch%s" % (
            self.elapsed, rate, self.requests / max(1e-9, self.elapsed), args.seed, args.lanes, args.batch,
            "" if self.ref_port else ", no reference"))
        if self.kinds:
            print("  mismatches by kind: " + ", ".join("%s %d" % kv for kv in self.kinds.most_common()))
        if self.collateral:
            print("  collateral (within %.0f s of a disturbance, not counted): " % COLLATERAL_WINDOW
                  + ", ".join("%s %d" % kv for kv in self.collateral.most_common()))
        if self.tolerated:
            print("  tolerated differences: " + ", ".join("%s %d" % kv for kv in self.tolerated.most_common()))
        groups = [(k, g) for k, g in self.groups.items() if not g["collateral"]]
        groups.sort(key=lambda kg: kg[1]["first"])
        if groups:
            print("  mismatch groups (first 20 of %d, in order of appearance; smallest example each):" % len(groups))
            for (kind, label), group in groups[:20]:
                ex = group["example"]
                print("    [%s] %s  x%d" % (kind, label, group["count"]))
                print("        case: %s" % show(ex["data"], 300))
                print("        tern: %s" % show_replies(ex["tern"]))
                if ex["ref"] is not None:
                    print("        ref:  %s" % show_replies(ex["ref"]))
                if ex["note"]:
                    print("        note: %s" % ex["note"])
        for canary in self.canaries:
            for failure in canary.failures:
                print("  CANARY %d FAILURE (%s) at %s: ops %s" % (
                    canary.number, failure["why"], time.strftime("%H:%M:%S", time.localtime(failure["time"])),
                    ", ".join(failure["ops"])))
                print("        expected: %s" % show(failure["expected"], 300))
                print("        got:      %s" % show(failure["got"], 300))
        if self.confirm_tried:
            print("  confirmation: %d suspects replayed alone with an observer, %d affected the observer"
                  " (%d skipped: they had every feature of a confirmed one)"
                  % (self.confirm_tried, len(self.confirmed), self.confirm_skipped))
        for number, item in enumerate(self.confirmed):
            if number >= 12:
                print("  CONFIRMED ISOLATION BREAK [%s] %s (%d bytes)" % (item["kind"], item["label"], len(item["data"])))
                continue
            print("  CONFIRMED ISOLATION BREAK [%s] %s" % (item["kind"], item["label"]))
            print("        case:     %s" % show(item["data"], 600))
            print("        evidence: %s" % item["evidence"])
            if "minimized" in item and item["minimized"] != item["data"]:
                print("        minimized (%d bytes): %s" % (len(item["minimized"]), show(item["minimized"], 600)))
                print("        evidence: %s" % item["minimized_evidence"])
        for failure in self.failures:
            print("  FAILURE: %s" % failure)
        failed = wrong > 0 or bool(self.failures) or bool(self.confirmed) or (args.strict and mismatches > 0)
        return failed


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
# --protocol auth: AUTH / HELLO sessions against a pool with users, compared reply by reply
# ----------------------------------------------------------------------------------------------

# The users of the fuzzed pool, given to Tern as `users:` (plus `redis_auth` for `default`) and to
# the reference redis-server as the same ACL rules (ACL SETUSER, requirepass).
AUTH_DEFAULT_PASSWORD = b"def-secret"
AUTH_USERS = {   # name: (password, Tern commands, Tern keys, Redis ACL SETUSER rules)
    b"app": (b"app-secret", ["+@read", "+@write", "-@dangerous"], ["~app:*"],
             ["+@read", "+@write", "-@dangerous", "~app:*"]),
    b"reader": (b"reader-secret", ["+@read", "+acl"], ["~*"], ["+@read", "+acl", "~*"]),
}
AUTH_PASSWORDS = dict([(b"default", AUTH_DEFAULT_PASSWORD)] + [(u, p[0]) for u, p in AUTH_USERS.items()])
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
NOPROTO = b"-NOPROTO unsupported protocol version\r\n"
AUTH_MAX_FAILURES = 10          # Tern closes a client at its 10th failed authentication in a row
AUTH_REPLY_TIMEOUT = 2.0
NOPERM_COMMAND_RE = re.compile(rb"-NOPERM (?:this user|User \S+) has no permissions to run the '([^'|]*)(?:\|[^']*)?' command\r\n")
HELLO_MAP_RE = re.compile(rb"\*14\r\n\$6\r\nserver\r\n\$5\r\nredis\r\n\$7\r\nversion\r\n\$[0-9]+\r\n[0-9.]+\r\n"
                          rb"\$5\r\nproto\r\n:([23])\r\n\$2\r\nid\r\n:[0-9]+\r\n\$4\r\nmode\r\n\$10\r\nstandalone\r\n"
                          rb"\$4\r\nrole\r\n\$6\r\nmaster\r\n\$7\r\nmodules\r\n\*0\r\n")
NOAUTH_HELLO = tuple(b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO %sAUTH "
                     b"<user> <pass> option can be used to authenticate the client and select the RESP protocol "
                     b"version at the same time\r\n" % proto for proto in (b"", b"<proto> "))
NOPERM_KEY_RES = (b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n",
                  b"-NOPERM No permissions to access a key\r\n")


def auth_normalize(reply):
    """Known, documented differences between Tern's replies and Redis 7.0's, folded away:
    NOPERM and HELLO's NOAUTH texts (Tern uses Redis 7.2's wording, and names a container
    command without its subcommand), and HELLO's map (`version` and `id` differ), reduced to
    its protocol version once its shape is checked."""
    if reply is None or isinstance(reply, str):
        return reply
    m = NOPERM_COMMAND_RE.fullmatch(reply)
    if m:
        return b"<NOPERM command " + m.group(1).lower() + b">"
    if reply in NOPERM_KEY_RES:
        return b"<NOPERM key>"
    if reply.startswith(b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"):
        m = HELLO_MAP_RE.fullmatch(reply)
        return b"<HELLO proto=" + m.group(1) + b">" if m else reply
    if reply in NOAUTH_HELLO:
        return b"<NOAUTH HELLO>"
    m = HELLO_SYNTAX_RE.fullmatch(reply)
    if m:
        # Redis quotes the option up to a NUL byte (CR and LF as spaces, other bytes as they
        # are); Tern its first 64 bytes up to a NUL, with `?` for bytes outside printable ASCII.
        option = bytes(c if 0x20 < c < 0x7f else 0x3f for c in m.group(1).split(b"\x00")[0][:64])
        return b"<HELLO syntax '" + option + b"'>"
    return reply


def hello_for_reference(args, authenticated):
    """HELLO as Redis 7.2 (and Tern) runs it, spelled for the Redis 7.0 reference. Redis 7.0
    acts on each option as it reads it: it authenticates at AUTH (so `HELLO 2 AUTH u p BOGUS`
    authenticates, then fails, and of two AUTH options the first that fails decides) and names
    the connection at SETNAME (even when the HELLO then fails with NOAUTH or WRONGPASS). Redis
    7.2 reads every option first (SETNAME names checked, the last AUTH and SETNAME win), then
    authenticates, then names the connection, so a HELLO answered with an error changes nothing.
    The reference is sent the options that 7.0 answers the same way: the failing option alone
    (cut to 64 bytes: Tern quotes no more, and Redis 7.0 closes the connection rather than quote
    a 16 KiB option), or the last AUTH, then the last SETNAME (left out when the HELLO will be
    refused with NOAUTH). `authenticated`: whether the reference connection is.
    None: send `args` unchanged (no options, or a version refused before the options)."""
    if len(args) <= 2 or args[1] != b"2":
        return None
    auth, name = None, None
    j = 2
    while j < len(args):
        more = len(args) - 1 - j
        opt = args[j].lower()
        if opt == b"auth" and more >= 2:
            auth = args[j + 1:j + 3]
            j += 3
        elif opt == b"setname" and more >= 1:
            if any(c < 0x21 or c > 0x7e for c in args[j + 1]):
                return args[:2] + args[j:j + 2]
            name = args[j + 1]
            j += 2
        else:
            return args[:2] + [args[j][:64]] + args[j + 1:j + 1 + min(more, 1 if opt == b"auth" else 0)]
    if auth is None and not authenticated:
        name = None
    return args[:2] + ([b"AUTH"] + auth if auth is not None else []) + ([b"SETNAME", name] if name is not None else [])


HELLO_SYNTAX_RE = re.compile(rb"-ERR Syntax error in HELLO option '(.*)'\r\n", re.S)


class AuthFrame:
    def __init__(self, args, label, inline=False, tern_only=None, closing=False, rewrite=False):
        self.args = args
        self.rewrite = rewrite              # a HELLO the reference is sent as hello_for_reference spells it
        self.label = label
        self.inline = inline
        self.tern_only = tern_only          # the reply Tern must give; not sent to the reference
        self.closing = closing              # may make a side close (pre-auth limits)

    def encode(self, args=None):
        args = args or self.args
        if self.inline:
            return b" ".join(args) + b"\r\n"
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

    def show(self):
        return ("inline " if self.inline else "") + " ".join(show(a, 40) for a in self.args)


class AuthGen:
    """Sessions of AUTH / HELLO / SETNAME frames with valid, wrong, missing, oversized, odd-arity
    and binary arguments, mixed with GET/SET on allowed and denied keys and a few commands whose
    replies show the session's state (ACL WHOAMI, CLIENT GETNAME, PING)."""

    def __init__(self, seed, lane):
        self.r = random.Random("%s/auth/%d" % (seed, lane))
        self.lane = lane
        self.session = 0

    def word(self, name):
        return self.r.choice([name.upper(), name.lower(), name.title()]).encode()

    def user(self):
        return self.r.choice([b"app", b"app", b"reader", b"default", b"default", b"APP", b"nobody", b"",
                              b"app\x00", b"\xff\xfe", b"u" * self.r.choice([1, 100, 3000])])

    def password(self, user):
        right = AUTH_PASSWORDS.get(user)
        r = self.r.random()
        if right is not None and r < 0.45:
            return right, "right"
        choices = [(b"", "empty"), (b"wrong", "wrong"), (self.r.choice(list(AUTH_PASSWORDS.values())), "other"),
                   (b"x" * self.r.choice([200, 4000, 16384]), "long"),
                   (bytes(self.r.randrange(256) for _ in range(self.r.randint(1, 24))), "binary")]
        if right is not None:
            choices += [(right.upper(), "case"), (right[:-1], "prefix"), (right + b"\x00", "nul"),
                        (right + b"\r\n", "crlf")]
        return self.r.choice(choices)

    def key(self):
        prefix = self.r.choice([b"app:", b"app:", b"other:", b"App:", b"app"])
        return prefix + b"%d:%d:%d" % (self.lane, self.session, self.r.randrange(4))

    def hello_options(self, labels):
        options = []
        for _ in range(self.r.choice([0, 1, 1, 1, 2, 2, 3])):
            r = self.r.random()
            if r < 0.55:
                user = self.user()
                password, kind = self.password(user)
                options += [self.word("auth"), user, password]
                labels.append("auth-" + kind)
            elif r < 0.8:
                name = self.r.choice([b"n%d" % self.r.randrange(100), b"with space", b"", b"bin\x01", b"x" * 300])
                options += [self.word("setname"), name]
                labels.append("setname")
            elif r < 0.9:
                options += [self.word("auth")] + [self.user() for _ in range(self.r.randint(0, 1))]
                labels.append("auth-missing")
            elif r < 0.95:
                options += [self.word("setname")]
                labels.append("setname-missing")
            else:
                options += [self.r.choice([b"bogus", b"", b"\x00", b"AUTHX"])]
                labels.append("bogus")
        return options

    def frame(self):
        r = self.r.random()
        if r < 0.30:
            shape = self.r.choice(["pass", "pass", "user", "user", "user", "none", "many"])
            if shape == "pass":
                password, kind = self.password(b"default")
                return AuthFrame([self.word("auth"), password], "AUTH pass-" + kind)
            if shape == "user":
                user = self.user()
                password, kind = self.password(user)
                return AuthFrame([self.word("auth"), user, password], "AUTH user-" + kind)
            if shape == "none":
                return AuthFrame([self.word("auth")], "AUTH no-args")
            user = self.user()
            return AuthFrame([self.word("auth"), user, self.password(user)[0]] + [b"x"] * self.r.randint(1, 3), "AUTH extra-args")
        if r < 0.58:
            labels = []
            version = self.r.choice([b"2", b"2", b"2", b"2", b"3", b"02", b"+2", b"2.0", b"-1", b"0", b"4", b"",
                                     b"99999999999999999999", b"two", None])
            args = [self.word("hello")]
            if version is not None:
                args.append(version)
                # At most 10 arguments: the reference is sent a shorter HELLO (see
                # hello_for_reference), which must meet the same pre-authentication caps.
                args += self.hello_options(labels)[:8]
            label = "HELLO " + ("-" if version is None else show(version, 20)) + " " + " ".join(labels)
            if version == b"3":
                return AuthFrame(args, label, tern_only=NOPROTO)
            return AuthFrame(args, label, rewrite=True)
        if r < 0.80:
            key = self.key()
            shape = self.r.choice(["get", "get", "set", "set", "getarity", "setarity", "del"])
            if shape == "get":
                return AuthFrame([self.word("get"), key], "GET " + key.split(b":")[0].decode("latin-1"))
            if shape == "set":
                return AuthFrame([self.word("set"), key, b"v%d" % self.r.randrange(1000)], "SET " + key.split(b":")[0].decode("latin-1"))
            if shape == "del":
                return AuthFrame([self.word("del"), key], "DEL")
            if shape == "getarity":
                return AuthFrame([self.word("get")], "GET no-key")
            return AuthFrame([self.word("set"), key], "SET no-value")
        if r < 0.93:
            shape = self.r.choice(["whoami", "getname", "setname", "ping", "echo"])
            if shape == "whoami":
                return AuthFrame([self.word("acl"), self.word("whoami")], "ACL WHOAMI")
            if shape == "getname":
                return AuthFrame([self.word("client"), self.word("getname")], "CLIENT GETNAME")
            if shape == "setname":
                return AuthFrame([self.word("client"), self.word("setname"), self.r.choice([b"cn", b"with space", b""])], "CLIENT SETNAME")
            if shape == "ping":
                return AuthFrame([self.word("ping")], "PING")
            return AuthFrame([self.word("echo"), b"e%d" % self.r.randrange(100)], "ECHO")
        # Inline forms of the authentication commands (simple tokens only).
        user = self.r.choice([b"app", b"reader", b"default", b"nobody"])
        password, kind = self.password(user)
        if not re.fullmatch(rb"[A-Za-z0-9:-]+", password):
            password, kind = b"wrong", "wrong"
        if self.r.random() < 0.5:
            return AuthFrame([self.word("auth"), user, password], "inline AUTH user-" + kind, inline=True)
        return AuthFrame([self.word("hello"), b"2", self.word("auth"), user, password], "inline HELLO 2 AUTH-" + kind, inline=True)

    def oversized(self):
        """A last frame that may pass Redis's pre-authentication caps (10 arguments, 16 KiB bulks)."""
        if self.r.random() < 0.5:
            count = self.r.choice([10, 11, 12, 64])
            return AuthFrame([self.word("auth")] + [b"a"] * (count - 1), "oversized %d args" % count, closing=True)
        size = self.r.choice([16384, 16385, 20000])
        return AuthFrame([self.word("auth"), b"app", b"p" * size], "oversized bulk %d" % size, closing=True)

    def session_steps(self):
        """Steps (lists of frames written at once) of one connection."""
        self.session += 1
        steps = []
        for _ in range(self.r.randint(1, 24)):
            size = 1 if self.r.random() < 0.8 else self.r.randint(2, 4)
            steps.append([self.frame() for _ in range(size)])
        if self.r.random() < 0.08:
            steps.append([self.oversized()])
        return steps


class AuthSide:
    def __init__(self, port):
        # Tens of thousands of short connections on loopback leave as many in TIME_WAIT; a new
        # connection that reuses such a port pair can be refused once. Retried; a server that
        # is gone still fails (and run_auth reports which process exited).
        for attempt in range(3):
            try:
                self.sock = connect(port)
                break
            except ConnectionRefusedError:
                if attempt == 2:
                    raise
                time.sleep(0.05)
        self.buf = bytearray()
        self.closed = False

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def reply(self, timeout=AUTH_REPLY_TIMEOUT):
        """One reply, "closed" or "hang"."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                end = resp_reply_end(self.buf, 0)
            except Framing as error:
                return "framing: %s" % error
            if end >= 0:
                reply = bytes(self.buf[:end])
                del self.buf[:end]
                return reply
            if self.closed:
                return "closed"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "hang"
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                return "hang"
            except OSError:
                data = b""
            if not data:
                self.closed = True
            self.buf += data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def auth_setup_reference(port):
    sock = connect(port)
    commands = [[b"AUTH", AUTH_DEFAULT_PASSWORD]]
    for name, (password, _, _, rules) in AUTH_USERS.items():
        commands.append([b"ACL", b"SETUSER", name, b"reset", b"on", b">" + password] + [r.encode() for r in rules])
    sock.sendall(b"".join(RedisProto.encode(*c) for c in commands))
    replies = read_replies(sock, resp_reply_end, len(commands))
    sock.close()
    if replies != [b"+OK\r\n"] * len(commands):
        raise RuntimeError("reference ACL setup failed: %r" % replies)


def auth_pool_config(directory, listen, backends):
    lines = ["fuzz_auth:", "  listen: 127.0.0.1:%d" % listen, "  redis: true", "  timeout: %d" % BACKEND_TIMEOUT_MS,
             "  redis_auth: %s" % AUTH_DEFAULT_PASSWORD.decode(), "  users:"]
    import hashlib
    for name, (password, commands, keys, _) in AUTH_USERS.items():
        lines += ["   - name: %s" % name.decode(), '     password_sha256: "%s"' % hashlib.sha256(password).hexdigest(),
                  "     commands: %s" % json.dumps(commands), "     keys: %s" % json.dumps(keys)]
    lines.append("  servers:")
    lines += ["   - 127.0.0.1:%d:1 auth-%d" % (port, i) for i, port in enumerate(backends)]
    path = os.path.join(directory, "tern-auth.yml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def auth_run_session(steps, tern_port, ref_port, stats):
    """Plays one session on a fresh connection to each side. Returns None, or a finding:
    (label, tern outcome, reference outcome, transcript)."""
    tern, ref = AuthSide(tern_port), AuthSide(ref_port)
    transcript = []
    failures = 0
    authenticated = False
    try:
        for step in steps:
            # Tern gets the step in one write (pipelined); the reference one frame at a time, so
            # that each HELLO can be spelled for the reference's state (hello_for_reference).
            tern.send(b"".join(f.encode() for f in step))
            for frame in step:
                stats["frames"] += 1
                t = tern.reply()
                if frame.tern_only is not None:
                    r = frame.tern_only
                else:
                    ref_args = hello_for_reference(frame.args, authenticated) if frame.rewrite else None
                    ref.send(frame.encode(ref_args))
                    r = ref.reply(AUTH_REPLY_TIMEOUT if not frame.closing else 0.5)
                transcript.append((frame, t, r))
                command = frame.args[0].lower()
                authenticates = command == b"auth" or (command == b"hello" and any(a.lower() == b"auth" for a in frame.args[2:]))
                if r == WRONGPASS:
                    failures += 1
                elif isinstance(r, bytes) and r[:1] in (b"+", b"*") and command in (b"auth", b"hello"):
                    authenticated = True
                    if authenticates:
                        failures = 0        # a successful authentication ends the run of failures
                if auth_normalize(t) != auth_normalize(r):
                    return frame.label, t, r, transcript
                if failures >= AUTH_MAX_FAILURES:
                    # Documented: Tern closes the client at its 10th failure in a row (Redis does not).
                    stats["lockouts"] += 1
                    rest = tern.reply(1.0)
                    if rest != "closed":
                        return "lockout after %d failures" % failures, rest, "closed", transcript
                    return None
                if isinstance(r, str):          # both closed (or hung) alike: the session is over
                    stats["closes"] += 1
                    return None
        # End of session: a PING shows whether each side still holds the connection and answers.
        probe = AuthFrame([b"PING"], "PING (end of session)")
        tern.send(probe.encode())
        ref.send(probe.encode())
        t, r = tern.reply(), ref.reply()
        transcript.append((probe, t, r))
        stats["frames"] += 1
        stats["closes"] += t == "closed"
        if auth_normalize(t) != auth_normalize(r):
            return probe.label, t, r, transcript
        return None
    finally:
        tern.close()
        ref.close()


def run_auth(args, processes):
    """The AUTH/HELLO differential run; returns whether it failed."""
    backends = []
    for i in range(2):
        port = processes.free_port()
        processes.start("auth-backend-%d" % i, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                                "--appendonly", "no", "--dir", processes.dir,
                                                "--requirepass", AUTH_DEFAULT_PASSWORD.decode()], port)
        backends.append(port)
    ref_port = processes.free_port()
    processes.start("auth-reference", ["redis-server", "--port", str(ref_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", processes.dir,
                                       "--requirepass", AUTH_DEFAULT_PASSWORD.decode()], ref_port)
    auth_setup_reference(ref_port)
    listen = processes.free_port()
    config = auth_pool_config(processes.dir, listen, backends)
    tern = processes.start("tern", [args.tern, "-c", config, "--threads", "1", "--no-stats", "--shutdown-timeout", "1"], listen)
    stats = collections.Counter()
    findings = collections.OrderedDict()
    lanes = args.lanes or 1
    gens = [AuthGen(args.seed, lane) for lane in range(lanes)]
    deadline = time.monotonic() + args.seconds
    lane = 0
    while time.monotonic() < deadline and stats["frames"] < args.requests:
        steps = gens[lane].session_steps()
        lane = (lane + 1) % lanes
        stats["sessions"] += 1
        try:
            finding = auth_run_session(steps, listen, ref_port, stats)
        except OSError as error:
            print("differential: auth: session %d: %s; processes: %s" % (stats["sessions"], error, ", ".join(
                "%s %s" % (name, "running" if child.poll() is None else "exited %s" % child.returncode)
                for name, child, _ in processes.children)))
            print(processes.log_tail("tern"))
            return True
        if finding:
            label, t, r, transcript = finding
            group = findings.setdefault((label, auth_normalize(t), auth_normalize(r)), [0, transcript])
            group[0] += 1
            if len(transcript) < len(group[1]):
                group[1] = transcript
        if tern.poll() is not None:
            print("differential: auth: Tern exited with %s:\n%s" % (tern.returncode, processes.log_tail("tern")))
            return True
    mismatches = sum(g[0] for g in findings.values())
    print("differential: auth: %d sessions, %d requests, %d lockouts, closes %d, mismatches %d"
          % (stats["sessions"], stats["frames"], stats["lockouts"], stats["closes"], mismatches))
    for (label, t, r), (count, transcript) in list(findings.items())[:20]:
        print("  mismatch %s (%d): tern %s, redis %s" % (label, count, show_replies([t]) if isinstance(t, bytes) else t,
                                                         show_replies([r]) if isinstance(r, bytes) else r))
        for frame, ft, fr in transcript[-6:]:
            print("      > %s\n          tern %s | redis %s" % (frame.show(),
                  show(ft, 100) if isinstance(ft, bytes) else ft, show(fr, 100) if isinstance(fr, bytes) else fr))
    return mismatches > 0


def write_config(directory, pools):
    text = []
    for name, listen, servers, extra in pools:
        text.append("%s:\n  listen: 127.0.0.1:%d\n  hash: fnv1a_64\n  distribution: ketama\n  timeout: %d\n"
                    % (name, listen, BACKEND_TIMEOUT_MS))
        text.extend("  %s\n" % line for line in extra)
        text.append("  servers:\n")
        text.extend("   - 127.0.0.1:%d:1 %s-%d\n" % (port, name, i) for i, port in enumerate(servers))
    path = os.path.join(directory, "tern.yml")
    with open(path, "w") as f:
        f.write("".join(text))
    return path


def parse_replay(text):
    """A Python-style escaped string (\\r, \\n, \\xNN; other bytes as given) to bytes."""
    return codecs.escape_decode(os.fsencode(text))[0]


def main():
    parser = argparse.ArgumentParser(description="Differential fuzzer for Tern (see the module docstring).")
    parser.add_argument("--tern", required=True, help="the tern binary")
    parser.add_argument("--protocol", choices=["memcache", "redis", "both", "auth"], default="both",
                        help="auth: AUTH/HELLO sessions on a pool with users (not part of both)")
    parser.add_argument("--requests", type=int, default=10 ** 9, help="most cases per protocol")
    parser.add_argument("--seconds", type=float, default=60.0, help="most seconds of fuzzing per protocol")
    parser.add_argument("--seed", default="1", help="seed for the cases (any string)")
    parser.add_argument("--strict", action="store_true", help="fail on mismatches too")
    parser.add_argument("--lanes", type=int, help="concurrent client connections fuzzing "
                        "(default 16 for memcache, 32 for redis, whose many protocol-error closes cost reconnects)")
    parser.add_argument("--batch", type=int, default=24, help="cases per batch on one connection")
    parser.add_argument("--canaries", type=int, default=2, help="canary threads")
    parser.add_argument("--canary-pause", type=float, default=0.002,
                        help="seconds each canary waits between its pipelines (they compete with the lanes for the CPU)")
    parser.add_argument("--no-reference", action="store_true", help="skip the direct reference server")
    parser.add_argument("--confirm-max", type=int, default=40, help="most suspects replayed for confirmation")
    parser.add_argument("--confirm-seconds", type=float, default=90.0, help="time budget of the confirmation")
    parser.add_argument("--minimize-max", type=int, default=6, help="confirmed cases to shrink")
    parser.add_argument("--minimize-seconds", type=float, default=20.0, help="time budget per shrunk case")
    parser.add_argument("--replay", help="only replay this case (escaped string) with an observer and exit")
    parser.add_argument("--findings", help="append every finding but the collateral ones to this file (JSON lines)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, config)")
    parser.add_argument("--progress", action="store_true", help="progress on stderr once a second")
    args = parser.parse_args()
    if not os.access(args.tern, os.X_OK):
        parser.error("not an executable: %s" % args.tern)
    for tool in ("memcached", "redis-server"):
        if shutil.which(tool) is None:
            parser.error("%s not found on PATH" % tool)
    protocols = ["memcache", "redis"] if args.protocol == "both" else [args.protocol]
    lanes_option = args.lanes
    if args.replay and len(protocols) != 1:
        parser.error("--replay needs --protocol memcache or redis")

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    # Also SIGINT: a shell starts background jobs with it ignored, and Python keeps that.
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, on_signal)

    processes = Processes(args.keep)
    failed = False
    if args.protocol == "auth":
        try:
            failed = run_auth(args, processes)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            failed = True
        finally:
            processes.stop_all()
        return 1 if failed else 0
    try:
        # Backends, references and one Tern serving every protocol asked for.
        setup = {}
        pools = []
        for name in protocols:
            start = processes.memcached if name == "memcache" else processes.redis
            backends = [start("%s-backend-%d" % (name, i))[0] for i in range(2)]
            reference = None if args.no_reference else start("%s-reference" % name)[0]
            listen = processes.free_port()
            extra = ["strict_keys: false"] if name == "memcache" else ["redis: true", 'hash_tag: "{}"']
            pools.append(("fuzz_" + name, listen, backends, extra))
            setup[name] = (listen, backends, reference)
        config = write_config(processes.dir, pools)
        tern = processes.start("tern", [args.tern, "-c", config, "--threads", "1", "--no-stats",
                                        "--shutdown-timeout", "1"], pools[0][1])
        for _, listen, _, _ in pools[1:]:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("Tern does not listen on %d" % listen)
                    time.sleep(0.02)

        for name in protocols:
            proto = PROTOCOLS[name]()
            listen, backends, reference = setup[name]
            args.lanes = lanes_option or (16 if name == "memcache" else 32)
            run = Run(args, proto, listen, backends, reference, tern, processes)
            if args.replay:
                run.canaries = []
                run.observer_pairs = run.place(b"OBSERVER", 1)[0]
                pair = run.place(SENTINEL_MARK, 1)[0]
                data = parse_replay(args.replay)
                evidence = run.probe(data, proto.sentinel(pair))
                print("replay %s: %s" % (show(data, 300), evidence or "no other client affected"))
                failed = failed or evidence is not None
                continue
            before = [proto.settings(port) for port in backends]
            run.fuzz()
            if not run.failures:
                run.confirm()
            failed = run.report(before) or failed
        if args.keep:
            print("logs and config kept in %s" % processes.dir)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        failed = True
    finally:
        processes.stop_all()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""TLS listeners (--listen tls://, core/rl_tls*.c): handshakes with openssl
s_client, Python's ssl module, curl and redis-cli; SNI (exact and wildcard
names, the first --tls-cert as the default), ALPN, TLS 1.2 and 1.3, session
resumption by tickets across workers, the --tls-* options passed through to
OpenSSL; handlers see the plaintext byte for byte (scripts/echo.lua,
scripts/http.lua including static files, scripts/redis.lua); hostile
clients: plaintext on the TLS port, silent or half-done handshakes (the
handshake timeout), forged, oversized and truncated records, renegotiation,
close_notify.

The certificates are made at test time with the openssl command line, once
per process, in a temporary directory removed at exit:

    ca          a root CA (RSA), the only thing the clients trust
    A           "localhost" + IP 127.0.0.1 (RSA, signed by the CA); the
                default certificate (the first --tls-cert)
    B           "*.example.test" (EC P-256, signed by an intermediate CA;
                its PEM file is the chain leaf + intermediate)
    client      a client certificate signed by the CA
"""

import atexit
import hashlib
import os
import re
import select
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

from harness import (ECHO_LUA, REPO, EnvCtx, Server, check, connect, echo_roundtrip, fail, free_port,
                     wait_for,
                     log_uniform, proc_net_tcp_queues, read_until_closed)

HTTP_LUA = "scripts/http.lua"
REDIS_LUA = "scripts/redis.lua"
HELLO = b"hello world\n"


# --------------------------------------------------------------------------
# Test certificates

_CNF = """
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_int]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[srv_a]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
[srv_b]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:*.example.test
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
[cli]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
"""

RSA = ["-newkey", "rsa:2048"]
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]


class Certs:
    pass


_CERTS = None


def _openssl(args, cwd, timeout=60, input=None):
    exe = shutil.which("openssl")
    if not exe:
        fail("openssl command not found (apt-get install openssl)")
    p = subprocess.run([exe] + args, cwd=cwd, capture_output=True, timeout=timeout, input=input)
    if p.returncode != 0:
        fail(f"`openssl {' '.join(args)}` exited {p.returncode}: "
             f"{p.stderr.decode(errors='replace')[-800:]}")
    return p


def certs():
    """The test PKI (see the module doc), made once per process."""
    global _CERTS
    if _CERTS is not None:
        return _CERTS
    d = tempfile.mkdtemp(prefix="rl-tls-certs-")
    atexit.register(shutil.rmtree, d, True)
    cnf = os.path.join(d, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(_CNF)
    serial = [100]

    def req_x509(name, subj, key, ext):
        _openssl(["req", "-x509", "-new"] + key + ["-nodes", "-keyout", name + ".key", "-out",
                  name + ".pem", "-days", "3", "-subj", subj, "-config", cnf, "-extensions", ext], d)

    def leaf(name, subj, key, ext, ca):
        _openssl(["req", "-new"] + key + ["-nodes", "-keyout", name + ".key", "-out", name + ".csr",
                  "-subj", subj, "-config", cnf], d)
        serial[0] += 1
        _openssl(["x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                  "-set_serial", str(serial[0]), "-days", "3", "-out", name + ".pem",
                  "-extfile", cnf, "-extensions", ext], d)

    req_x509("ca", "/O=ringline test/CN=ringline test root CA", RSA, "v3_ca")
    leaf("int", "/O=ringline test/CN=ringline test intermediate CA", EC, "v3_int", "ca")
    leaf("a", "/O=ringline test/OU=certA/CN=localhost", RSA, "srv_a", "ca")
    leaf("b", "/O=ringline test/OU=certB/CN=*.example.test", EC, "srv_b", "int")
    leaf("client", "/O=ringline test/OU=client/CN=ringline test client", EC, "cli", "ca")
    with open(os.path.join(d, "b-chain.pem"), "wb") as out:
        for n in ("b.pem", "int.pem"):
            with open(os.path.join(d, n), "rb") as f:
                out.write(f.read())
    c = Certs()
    c.dir = d
    c.ca = os.path.join(d, "ca.pem")
    c.a_cert, c.a_key = os.path.join(d, "a.pem"), os.path.join(d, "a.key")
    c.b_cert, c.b_key = os.path.join(d, "b-chain.pem"), os.path.join(d, "b.key")
    c.client_cert, c.client_key = os.path.join(d, "client.pem"), os.path.join(d, "client.key")
    for k in ("a.key", "b.key", "client.key", "ca.key", "int.key"):
        os.chmod(os.path.join(d, k), 0o600)
    _CERTS = c
    return c


def client_context(maximum=None, minimum=None):
    """A verifying client context that trusts only the test CA."""
    sc = ssl.create_default_context(cafile=certs().ca)
    if maximum is not None:
        sc.maximum_version = maximum
    if minimum is not None:
        sc.minimum_version = minimum
    return sc


# --------------------------------------------------------------------------
# Servers

def tls_args(alpn=None, extra=()):
    c = certs()
    a = ["--tls-cert", c.a_cert, "--tls-key", c.a_key, "--tls-cert", c.b_cert, "--tls-key", c.b_key]
    if alpn:
        a += ["--tls-alpn", alpn]
    return a + [str(x) for x in extra]


def tls_server(ctx, script=ECHO_LUA, args=(), alpn=None, env=None, tcp=False, tls_extra=()):
    """script with one tls:// listener on a free port (and, with tcp=True, a
    plain tcp:// one after it); certificates A (default) and B."""
    listen = [f"tls://127.0.0.1:{free_port()}"]
    if tcp:
        listen.append(f"tcp://127.0.0.1:{free_port()}")
    srv = Server(EnvCtx(ctx, env or {}), script=script, listen=listen,
                 args=list(args) + tls_args(alpn, tls_extra))
    ctx.servers.append(srv)
    srv.start()
    return srv


# --------------------------------------------------------------------------
# openssl s_client

class SClient:
    def __init__(self, rc, text, results, hung):
        self.rc = rc
        self.text = text          # stdout and stderr
        self.results = results    # per step: True when what it waited for came
        self.hung = hung          # killed: did not exit by itself

    def field(self, regex):
        m = re.search(regex, self.text, re.M)
        return m.group(1) if m else None

    @property
    def subject(self):
        return self.field(r"^subject=(.*)$")

    @property
    def new_or_reused(self):
        """('New' | 'Reused', 'TLSv1.x', cipher) or None."""
        m = re.search(r"^(New|Reused), (TLSv1\.\d|\(NONE\)), Cipher is (\S+)", self.text, re.M)
        return m.groups() if m else None

    @property
    def alpn(self):
        if re.search(r"^No ALPN negotiated", self.text, re.M):
            return ""
        return self.field(r"^ALPN protocol: (\S+)")

    @property
    def verified(self):
        return bool(re.search(r"^\s*Verify return code: 0 \(ok\)", self.text, re.M))

    def tail(self, n=1500):
        return self.text[-n:]


_probe_seq = [0]


def probe_line():
    _probe_seq[0] += 1
    return b"rl-tls-probe-%d-%d" % (os.getpid(), _probe_seq[0])


def s_client(ctx, port, args=(), steps=None, timeout=10.0, settle=0.7):
    """Run `openssl s_client -connect 127.0.0.1:port -CAfile ca
    -verify_return_error args`.  steps: [(bytes to type, bytes to wait for in
    the output, or None to just let settle seconds pass)]; default: type one
    unique line and wait for its echo (an echo server).  Then stdin is
    closed (s_client sends close_notify and exits).  Waiting for the echo
    also means the TLS 1.3 tickets have been read (they precede it)."""
    exe = shutil.which("openssl")
    if not exe:
        fail("openssl command not found")
    timeout *= ctx.factor
    if steps is None:
        m = probe_line()
        steps = [(m + b"\n", m)]
    cmd = [exe, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", certs().ca,
           "-verify_return_error"] + [str(a) for a in args]
    ctx.log(" ".join(cmd))
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()
    eof = [False]

    def pump(pred, t):
        deadline = time.monotonic() + t
        while not eof[0] and not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([p.stdout], [], [], left)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if chunk:
                    out.extend(chunk)
                else:
                    eof[0] = True
        return pred()

    results = []
    hung = False
    try:
        for data, want in steps:
            if eof[0]:
                results.append(False)
                continue
            try:
                p.stdin.write(data)
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                results.append(False)
                continue
            if want is None:
                pump(lambda: False, settle * ctx.factor)
                results.append(True)
            else:
                results.append(pump(lambda: want in out, timeout))
        try:
            p.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        pump(lambda: False, timeout)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            hung = True
    finally:
        if p.poll() is None:
            hung = True
            p.kill()
            p.wait(5)
        for f in (p.stdout, p.stdin):
            try:
                f.close()
            except Exception:
                pass
    text = out.decode("utf-8", "replace")
    ctx.log(f"s_client rc={p.returncode} hung={hung} results={results}")
    return SClient(p.returncode, text, results, hung)


# --------------------------------------------------------------------------
# TLS over a raw socket (ssl.SSLObject over memory BIOs), for the tests that
# need to reach under the TLS layer.

class RawTls:
    def __init__(self, ctx, addr, hostname="localhost", sslctx=None, timeout=5.0):
        self.timeout = timeout * ctx.factor
        self.sock = connect(addr, self.timeout)
        self.inc, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = (sslctx or client_context()).wrap_bio(self.inc, self.outb,
                                                         server_hostname=hostname)

    def close(self):
        self.sock.close()

    def flush(self):
        d = self.outb.read()
        if d:
            self.sock.sendall(d)

    def _fill(self, deadline, what):
        left = deadline - time.monotonic()
        if left <= 0:
            fail(f"timed out waiting for {what}")
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(1 << 18)
        except socket.timeout:
            return
        except ConnectionResetError:
            fail(f"connection reset while waiting for {what}")
        if not d:
            fail(f"EOF while waiting for {what}")
        self.inc.write(d)

    def handshake(self):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self._fill(deadline, "the TLS handshake")
        self.flush()
        return self

    def send(self, data):
        self.obj.write(data)
        self.flush()

    def recv_exact(self, n, what="data"):
        out = bytearray()
        deadline = time.monotonic() + self.timeout
        while len(out) < n:
            try:
                out += self.obj.read(n - len(out))
            except ssl.SSLWantReadError:
                self.flush()
                self._fill(deadline, f"{what} ({len(out)} of {n} bytes so far)")
        return bytes(out)

    def echo(self, payload):
        self.send(payload)
        got = self.recv_exact(len(payload), "the echo")
        check(got == payload, f"TLS echo mismatch: sent {payload[:40]!r}, got {got[:40]!r}")


def tls_echo_ok(ctx, srv, hostname="localhost", payload=None):
    """A fresh Python ssl connection handshakes and echoes."""
    payload = payload or (b"still serving " + probe_line() + b"\n")
    t = RawTls(ctx, srv.addr, hostname)
    try:
        t.handshake()
        t.echo(payload)
    finally:
        t.close()


def https_get(ctx, srv, path=b"/", hostname="localhost"):
    """GET path with Connection: close over Python ssl; the whole reply."""
    sc = client_context()
    with socket.create_connection(srv.addr[1], 5 * ctx.factor) as raw:
        with sc.wrap_socket(raw, server_hostname=hostname) as s:
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: " + hostname.encode() +
                      b"\r\nConnection: close\r\n\r\n")
            out = bytearray()
            while True:
                try:
                    d = s.recv(65536)
                except (ssl.SSLEOFError, ConnectionResetError):
                    break
                if not d:
                    break
                out += d
            return bytes(out)


def wait_closed(ctx, sock, limit):
    """Read from the raw socket until EOF/reset: (data, how, seconds)."""
    t0 = time.monotonic()
    data, how = read_until_closed(sock, limit * ctx.factor)
    return data, how, time.monotonic() - t0


# --------------------------------------------------------------------------
# 1. s_client: SNI, ALPN, versions

def test_tls_s_client_handshake_sni_alpn(ctx):
    """openssl s_client: SNI localhost -> certificate A, foo.example.test ->
    B (wildcard, sent with its intermediate: the chain verifies against the
    root alone), an unknown name and no SNI at all -> the default A; ALPN
    http/1.1 chosen from --tls-alpn http/1.1,redis; TLS 1.2 and 1.3 both
    handshake and echo, with either certificate."""
    c = certs()
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "2"], alpn="http/1.1,redis")
    port = srv.port
    cases = [
        (["-servername", "localhost", "-verify_hostname", "localhost"], "certA", True),
        (["-servername", "foo.example.test", "-verify_hostname", "foo.example.test"], "certB", True),
        (["-servername", "bar.example.test", "-verify_hostname", "bar.example.test"], "certB", True),
        (["-servername", "unknown.invalid"], "certA", False),
        (["-servername", "example.test"], "certA", False),         # a wildcard needs a label
        (["-servername", "a.b.example.test"], "certA", False),     # ... exactly one label
        (["-noservername"], "certA", False),
    ]
    for args, want, named in cases:
        for ver in ("-tls1_2", "-tls1_3"):
            r = s_client(ctx, port, args + [ver, "-alpn", "http/1.1"])
            what = f"s_client {' '.join(args)} {ver}"
            check(r.results == [True], f"{what}: no echo through the TLS connection "
                  f"(rc {r.rc}): {r.tail()}")
            check(r.subject and want in r.subject,
                  f"{what}: peer certificate subject {r.subject!r}, want the {want} one")
            check(r.verified, f"{what}: the chain does not verify against the CA: {r.tail()}")
            nr = r.new_or_reused
            check(nr and nr[1] == ("TLSv1.2" if ver == "-tls1_2" else "TLSv1.3"),
                  f"{what}: negotiated {nr}")
            check(r.alpn == "http/1.1", f"{what}: ALPN {r.alpn!r}, want http/1.1")
            check(r.rc == 0 and not r.hung, f"{what}: s_client exit {r.rc} hung={r.hung}")
    # ALPN: the server's list, the client's choices.
    r = s_client(ctx, port, ["-servername", "localhost", "-alpn", "redis"])
    check(r.results == [True] and r.alpn == "redis", f"ALPN redis: {r.alpn!r}: {r.tail()}")
    r = s_client(ctx, port, ["-servername", "localhost", "-alpn", "h2,http/1.1"])
    check(r.results == [True] and r.alpn == "http/1.1",
          f"ALPN h2,http/1.1 against http/1.1,redis: {r.alpn!r}: {r.tail()}")
    r = s_client(ctx, port, ["-servername", "localhost"])
    check(r.results == [True] and r.alpn == "", f"no ALPN offered: {r.alpn!r}: {r.tail()}")
    # A client certificate the server did not ask for changes nothing.
    r = s_client(ctx, port, ["-servername", "localhost", "-cert", c.client_cert, "-key", c.client_key])
    check(r.results == [True] and r.subject and "certA" in r.subject,
          f"with an unrequested client certificate: {r.tail()}")
    # Without --tls-alpn: no ALPN is negotiated; the client's offer is no error.
    srv2 = tls_server(ctx, ECHO_LUA, args=["--workers", "1"])
    r = s_client(ctx, srv2.port, ["-servername", "localhost", "-alpn", "http/1.1"])
    check(r.results == [True] and r.alpn == "",
          f"a server without --tls-alpn negotiated ALPN {r.alpn!r}: {r.tail()}")
    srv.assert_alive()
    srv2.assert_alive()


def test_tls_options_passthrough(ctx):
    """--tls-ciphersuites, --tls-ciphers, --tls-groups reach OpenSSL;
    --tls-min-version 1.3 refuses TLS 1.2; the default refuses TLS 1.1."""
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "1"], tls_extra=[
        "--tls-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256",
        "--tls-ciphers", "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-CHACHA20-POLY1305",
        "--tls-groups", "X25519"])
    base = ["-servername", "localhost"]
    r = s_client(ctx, srv.port, base + ["-tls1_3"])
    check(r.results == [True] and r.new_or_reused and r.new_or_reused[2] == "TLS_CHACHA20_POLY1305_SHA256",
          f"--tls-ciphersuites: negotiated {r.new_or_reused}: {r.tail()}")
    check("Server Temp Key: X25519" in r.text, f"--tls-groups X25519: {r.tail()}")
    r = s_client(ctx, srv.port, base + ["-tls1_2"])
    check(r.results == [True] and r.new_or_reused and r.new_or_reused[2] == "ECDHE-RSA-CHACHA20-POLY1305",
          f"--tls-ciphers: negotiated {r.new_or_reused}: {r.tail()}")
    r = s_client(ctx, srv.port, ["-tls1_2", "-servername", "x.example.test"])
    check(r.results == [True] and r.new_or_reused and r.new_or_reused[2] == "ECDHE-ECDSA-CHACHA20-POLY1305",
          f"--tls-ciphers with the EC certificate B: {r.new_or_reused}: {r.tail()}")
    # No common suite / group: the handshake fails, the server goes on.
    r = s_client(ctx, srv.port, base + ["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"])
    check(r.results == [False] and r.rc != 0 and not r.hung,
          f"a TLS 1.3 suite the server does not allow handshook: {r.tail()}")
    r = s_client(ctx, srv.port, base + ["-tls1_3", "-groups", "P-256"])
    check(r.results == [False] and r.rc != 0 and not r.hung,
          f"a group the server does not allow handshook: {r.tail()}")
    tls_echo_ok(ctx, srv)
    # --tls-min-version 1.3
    srv13 = tls_server(ctx, ECHO_LUA, args=["--workers", "1"], tls_extra=["--tls-min-version", "1.3"])
    r = s_client(ctx, srv13.port, base + ["-tls1_2"])
    check(r.results == [False] and r.rc != 0 and not r.hung,
          f"--tls-min-version 1.3 accepted TLS 1.2: {r.tail()}")
    r = s_client(ctx, srv13.port, base + ["-tls1_3"])
    check(r.results == [True] and r.new_or_reused and r.new_or_reused[1] == "TLSv1.3",
          f"--tls-min-version 1.3, a TLS 1.3 client: {r.tail()}")
    # The default minimum is 1.2: a TLS 1.1 client is refused (and the
    # refusal is a handshake failure, not a hang).
    r = s_client(ctx, srv.port, base + ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"])
    check(r.results == [False] and r.rc != 0 and not r.hung, f"a TLS 1.1 client: {r.tail()}")
    tls_echo_ok(ctx, srv)
    srv.assert_alive()
    srv13.assert_alive()


def _startup(ctx, args, listen=None):
    listen = listen or [f"tls://127.0.0.1:{free_port()}"]
    cmd = [ctx.bin]
    for a in listen:
        cmd += ["--listen", a]
    cmd += [str(a) for a in args] + [ECHO_LUA]
    from harness import REPO
    try:
        p = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=10 * ctx.factor, env=ctx.server_env())
    except subprocess.TimeoutExpired:
        fail(f"`{' '.join(cmd)}` did not exit (started with a bad TLS configuration?)")
    return p.returncode, p.stderr.decode(errors="replace")


def test_tls_bad_configuration(ctx):
    """A tls:// listener with an unusable TLS configuration stops the server
    at startup with an error (not a server that accepts and fails every
    handshake)."""
    c = certs()
    missing = os.path.join(ctx.tmpdir, "missing.pem")
    garbage = os.path.join(ctx.tmpdir, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    cases = [
        ("no certificate at all", []),
        ("--tls-cert without --tls-key", ["--tls-cert", c.a_cert]),
        ("a missing certificate file", ["--tls-cert", missing, "--tls-key", c.a_key]),
        ("a garbage certificate file", ["--tls-cert", garbage, "--tls-key", c.a_key]),
        ("a key that does not match", ["--tls-cert", c.a_cert, "--tls-key", c.b_key]),
        ("a bad --tls-min-version", ["--tls-cert", c.a_cert, "--tls-key", c.a_key,
                                     "--tls-min-version", "1.1"]),
        ("bad --tls-ciphersuites", ["--tls-cert", c.a_cert, "--tls-key", c.a_key,
                                    "--tls-ciphersuites", "NO_SUCH_SUITE"]),
    ]
    for what, args in cases:
        rc, err = _startup(ctx, args)
        check(rc != 0, f"{what}: the server started (exit {rc}); stderr {err[-400:]!r}")
        check(rc > 0, f"{what}: died of signal {-rc}: {err[-600:]!r}")
        check(err.strip(), f"{what}: exit {rc} without a message on stderr")


# --------------------------------------------------------------------------
# 2. Bytes through: many concurrent Python ssl connections

def _cpu_s(pid):
    """User + system CPU seconds of process pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1.0


class _TlsEchoConn:
    RAW_HIGH = 256 * 1024      # bytes of ciphertext queued before writing more

    def __init__(self, i, addr, sslctx, hostname, payload, sizes):
        self.i = i
        self.hostname = hostname
        fam, sa = addr
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(sa)
        self.connecting = True
        self.inc, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = sslctx.wrap_bio(self.inc, self.outb, server_hostname=hostname)
        self.payload = payload
        self.sizes = sizes
        self.si = 0
        self.sent = 0
        self.received = 0
        self.raw_out = bytearray()
        self.hs = False
        self.error = None
        self.ev = None

    def status(self):
        return (f"conn {self.i} ({self.hostname}): handshake {'done' if self.hs else 'not done'}, "
                f"sent {self.sent}/{len(self.payload)}, received {self.received}")

    @property
    def done(self):
        return self.received == len(self.payload)

    def events(self):
        ev = selectors.EVENT_READ
        if self.connecting or self.raw_out:
            ev |= selectors.EVENT_WRITE
        return ev

    def on_event(self, mask):
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.error = f"connect failed: {os.strerror(err)}"
                return
            if not mask & selectors.EVENT_WRITE:
                return
            self.connecting = False
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mask & selectors.EVENT_READ:
            try:
                d = self.sock.recv(1 << 18)
            except BlockingIOError:
                d = None
            except ConnectionResetError:
                self.error = "connection reset by the server"
                return
            if d == b"":
                self.error = "EOF from the server before the whole echo"
                return
            if d:
                self.inc.write(d)
        self.advance()
        if self.error is None and self.raw_out:
            try:
                n = self.sock.send(self.raw_out)
                del self.raw_out[:n]
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError) as e:
                self.error = f"send: {e}"

    def advance(self):
        try:
            if not self.hs:
                try:
                    self.obj.do_handshake()
                    self.hs = True
                except ssl.SSLWantReadError:
                    pass
            if self.hs:
                while True:
                    try:
                        d = self.obj.read(1 << 18)
                    except ssl.SSLWantReadError:
                        break
                    if not d:
                        break
                    want = self.payload[self.received:self.received + len(d)]
                    if d != want:
                        k = next((j for j in range(min(len(d), len(want))) if d[j] != want[j]),
                                 min(len(d), len(want)))
                        self.error = (f"echo differs at byte {self.received + k}: got "
                                      f"{d[k:k + 16]!r}, want {bytes(want[k:k + 16])!r}")
                        return
                    self.received += len(d)
                while (self.sent < len(self.payload) and
                       len(self.raw_out) + self.outb.pending < self.RAW_HIGH):
                    n = self.sizes[self.si]
                    self.si += 1
                    self.obj.write(self.payload[self.sent:self.sent + n])
                    self.sent += n
        except ssl.SSLError as e:
            self.error = f"TLS error: {e}"
        self.raw_out += self.outb.read()


def run_tls_echo(ctx, addr, conns, timeout, srv=None):
    sel = selectors.DefaultSelector()
    live = set()
    for c in conns:
        c.ev = c.events()
        sel.register(c.sock, c.ev, c)
        live.add(c)
    deadline = time.monotonic() + timeout
    try:
        while live:
            if time.monotonic() > deadline:
                stuck = sorted(live, key=lambda c: c.i)
                diag = ""
                if srv is not None:
                    sq, _ = proc_net_tcp_queues(srv.port)
                    diag = (f"; server side (send-q, recv-q) of its connections: {sorted(sq)[-6:]}, "
                            f"server CPU time {_cpu_s(srv.pid):.1f}s")
                fail(f"TLS echo: {len(stuck)} of {len(conns)} connections not done after "
                     f"{timeout:.0f}s: " + "; ".join(c.status() for c in stuck[:5]) + diag)
            for key, mask in sel.select(0.5):
                c = key.data
                c.on_event(mask)
                if c.error:
                    fail(f"TLS echo: {c.status()}: {c.error}")
                if c.done:
                    sel.unregister(c.sock)
                    c.sock.close()
                    live.discard(c)
                    continue
                ev = c.events()
                if ev != c.ev:
                    sel.modify(c.sock, ev, c)
                    c.ev = ev
    finally:
        for c in conns:
            c.sock.close()
        sel.close()


def test_tls_echo_bytes_exact(ctx):
    """scripts/echo.lua over TLS, 2 workers: 50 concurrent Python ssl
    connections (TLS 1.3 and 1.2, SNI localhost and *.example.test), each
    writing ~2 MiB in pieces of 1 byte to 256 KiB, all read back byte for
    byte; the same server's tcp:// listener still echoes in plaintext."""
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "2"], tcp=True)
    rng = ctx.rng
    n_conns = 50
    per = int((2 << 20) * ctx.volume)
    pool = rng.randbytes(2 * per + (1 << 20))
    ctx13 = client_context(minimum=ssl.TLSVersion.TLSv1_3)
    ctx12 = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    conns = []
    total = 0
    for i in range(n_conns):
        size = rng.randint(per * 3 // 4, per * 5 // 4)
        off = rng.randrange(len(pool) - size)
        payload = memoryview(pool)[off:off + size]
        sizes, s = [], 0
        while s < size:
            n = log_uniform(rng, 1, 256 * 1024)
            sizes.append(n)
            s += n
        host = "localhost" if i % 5 else f"h{i}.example.test"
        conns.append(_TlsEchoConn(i, srv.addrs[0], ctx12 if i % 3 == 2 else ctx13, host, payload, sizes))
        total += size
    t0 = time.monotonic()
    run_tls_echo(ctx, srv.addrs[0], conns, 30 * ctx.factor, srv)
    dt = time.monotonic() - t0
    ctx.log(f"{n_conns} TLS connections echoed {total / 1e6:.0f} MB in {dt:.1f}s")
    echo_roundtrip(srv.addrs[1], b"plain tcp next to tls\n")
    tls_echo_ok(ctx, srv)
    srv.assert_alive()


def test_tls_close_notify(ctx):
    """The TLS end of stream is the handler's EOF, as a TCP FIN is: a client
    that sends 200 KB and then close_notify gets every byte back, then the
    connection ends (close_notify/EOF)."""
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "1"])
    payload = ctx.rng.randbytes(200000)
    t = RawTls(ctx, srv.addr)
    try:
        t.handshake()
        t.send(payload)
        try:
            t.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        t.flush()
        got = bytearray()
        deadline = time.monotonic() + 10 * ctx.factor
        end = None
        while end is None:
            try:
                d = t.obj.read(1 << 18)
                if not d:
                    end = "close_notify"
                got += d
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                end = "close_notify"
                break
            except ssl.SSLError as e:
                end = f"TLS error {e}"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                end = "timeout"
                break
            t.sock.settimeout(left)
            try:
                d = t.sock.recv(1 << 18)
            except socket.timeout:
                continue
            except ConnectionResetError:
                end = "reset"
                break
            if not d:
                end = "eof"
                t.inc.write_eof()
                # drain what is buffered
                try:
                    got += t.obj.read(1 << 20)
                except ssl.SSLError:
                    pass
                break
            t.inc.write(d)
        check(bytes(got) == payload,
              f"after close_notify: got {len(got)} of {len(payload)} bytes back "
              f"({'equal prefix' if payload.startswith(bytes(got)) else 'DIFFERENT'}), ended by {end}")
        check(end in ("close_notify", "eof"), f"after the echo the connection ended by {end}")
    finally:
        t.close()
    tls_echo_ok(ctx, srv)
    srv.assert_alive()


# --------------------------------------------------------------------------
# 3. Session resumption

def test_tls_session_resumption(ctx):
    """Session tickets, 2 workers: a TLS 1.3 session saved by s_client
    -sess_out resumes ("Reused") on 8 chained reconnections (the listeners'
    workers pick connections at random: either worker must accept the
    other's tickets); TLS 1.2 tickets too; another server process does not
    resume it but falls back to a full handshake."""
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "2"])
    base = ["-servername", "localhost"]
    for ver in ("-tls1_3", "-tls1_2"):
        sess = os.path.join(ctx.tmpdir, f"sess{ver}-0.pem")
        r = s_client(ctx, srv.port, base + [ver, "-sess_out", sess])
        check(r.results == [True] and r.new_or_reused and r.new_or_reused[0] == "New",
              f"{ver} first connection: {r.new_or_reused}: {r.tail()}")
        check(os.path.exists(sess) and os.path.getsize(sess) > 0,
              f"{ver}: s_client saved no session (no ticket from the server?): {r.tail()}")
        if ver == "-tls1_2":
            check("TLS session ticket:" in r.text, f"TLS 1.2: no session ticket issued: {r.tail()}")
        first = sess
        for k in range(1, 9):
            nxt = os.path.join(ctx.tmpdir, f"sess{ver}-{k}.pem")
            r = s_client(ctx, srv.port, base + [ver, "-sess_in", sess, "-sess_out", nxt])
            check(r.results == [True], f"{ver} resumption {k}: no echo: {r.tail()}")
            check(r.new_or_reused and r.new_or_reused[0] == "Reused",
                  f"{ver} resumption {k} of 8: {r.new_or_reused}, want Reused: {r.tail()}")
            if os.path.exists(nxt) and os.path.getsize(nxt) > 0:
                sess = nxt
        # Another process has other ticket keys: a full handshake, no error.
        other = tls_server(ctx, ECHO_LUA, args=["--workers", "1"])
        r = s_client(ctx, other.port, base + [ver, "-sess_in", first])
        check(r.results == [True] and r.new_or_reused and r.new_or_reused[0] == "New",
              f"{ver}: a ticket from another server process: {r.new_or_reused}: {r.tail()}")
        other.assert_alive()
    srv.assert_alive()


# --------------------------------------------------------------------------
# 4. HTTP with curl

def _curl(ctx, args, timeout=30):
    exe = shutil.which("curl")
    if not exe:
        fail("curl not found (apt-get install curl)")
    cmd = [exe, "-sS", "--max-time", str(int(timeout * ctx.factor))] + [str(a) for a in args]
    ctx.log(" ".join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout * ctx.factor + 5)
    except subprocess.TimeoutExpired:
        fail(f"curl did not finish: {' '.join(cmd)}")
    if p.returncode != 0:
        fail(f"curl exited {p.returncode}: {' '.join(cmd)}: {p.stderr.decode(errors='replace')[-800:]}")
    return p


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_tls_curl_http(ctx):
    """scripts/http.lua over TLS with curl: two URLs on one keep-alive
    connection (num_connects 1 then 0, "Re-using"), ALPN http/1.1 chosen
    over curl's h2, POST bodies (Content-Length and chunked), static files
    sent by the worker from disk (8 MiB, a range, HEAD) over TLS 1.2 and
    1.3, byte exact."""
    root = os.path.join(ctx.tmpdir, "root")
    os.makedirs(root)
    big = ctx.rng.randbytes(int((8 << 20) * ctx.volume) + 12345)
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(big)
    with open(os.path.join(root, "small.txt"), "wb") as f:
        f.write(b"small static\n")
    srv = tls_server(ctx, HTTP_LUA, args=["--workers", "2"], alpn="http/1.1",
                     env={"RINGLINE_HTTP_ROOT": root})
    port = srv.port
    c = certs()
    base = f"https://localhost:{port}"
    common = ["--cacert", c.ca, "--resolve", f"localhost:{port}:127.0.0.1"]
    o1, o2 = os.path.join(ctx.tmpdir, "o1"), os.path.join(ctx.tmpdir, "o2")
    p = _curl(ctx, common + ["-v", "-w", "%{num_connects} %{http_code} %{http_version} %{ssl_verify_result}\n",
                             "-o", o1, f"{base}/", "-o", o2, f"{base}/echo"])
    lines = p.stdout.decode().split()
    err = p.stderr.decode(errors="replace")
    check(lines == ["1", "200", "1.1", "0", "0", "200", "1.1", "0"],
          f"two URLs, one connection: -w gave {lines} (want 1 then 0 connects, 200, HTTP/1.1, "
          f"verified): {err[-1200:]}")
    check("Re-using existing connection" in err, f"curl did not reuse the connection: {err[-1200:]}")
    check(re.search(r"ALPN[:,].*server accepted.*http/1\.1", err),
          f"curl (offering h2,http/1.1) did not get ALPN http/1.1: {err[-1500:]}")
    check(_read(o1) == HELLO, f"GET /: {_read(o1)[:200]!r}")
    check(f"Host: localhost:{port}".lower().encode() in _read(o2).lower(),
          f"GET /echo: the request headers not seen by the handler: {_read(o2)[:300]!r}")
    # POST bodies
    body = ctx.rng.randbytes(300000)
    bf = os.path.join(ctx.tmpdir, "body.bin")
    with open(bf, "wb") as f:
        f.write(body)
    for extra, what in (([], "Content-Length"), (["-H", "Transfer-Encoding: chunked"], "chunked")):
        out = os.path.join(ctx.tmpdir, "post.out")
        p = _curl(ctx, common + extra + ["-H", "Content-Type: application/octet-stream",
                                         "--data-binary", "@" + bf, "-w", "%{http_code}", "-o", out,
                                         f"{base}/echo"])
        got = _read(out)
        check(p.stdout.decode().strip() == "200" and got == body,
              f"POST /echo ({what}): status {p.stdout.decode().strip()}, {len(got)} of {len(body)} "
              f"bytes, {'equal' if got == body else 'different'}")
    # Static files, both versions
    for ver in (["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"]):
        out = os.path.join(ctx.tmpdir, "big.out")
        p = _curl(ctx, common + ver + ["-w", "%{http_code} %{ssl_verify_result}\n", "-o", out,
                                       f"{base}/static/big.bin", "-o", o1, f"{base}/static/small.txt"])
        got = _read(out)
        check(hashlib.sha256(got).digest() == hashlib.sha256(big).digest(),
              f"static big.bin over {ver[0]}: {len(got)} of {len(big)} bytes, content "
              f"{'equal' if got == big else 'differs'}")
        check(_read(o1) == b"small static\n", f"static small.txt after big.bin over {ver[0]}")
        check(p.stdout.decode().split() == ["200", "0", "200", "0"], f"static over {ver[0]}: {p.stdout!r}")
        p = _curl(ctx, common + ver + ["-r", "1000000-1999999", "-o", out, "-w", "%{http_code}",
                                       f"{base}/static/big.bin"])
        check(p.stdout.decode().strip() == "206" and _read(out) == big[1000000:2000000],
              f"range over {ver[0]}: status {p.stdout!r}, {len(_read(out))} bytes")
        p = _curl(ctx, common + ver + ["-I", f"{base}/static/big.bin"])
        check(re.search(rb"(?im)^content-length: *%d\r?$" % len(big), p.stdout),
              f"HEAD over {ver[0]}: {p.stdout[:400]!r}")
    # A plain Python client: Connection: close gets the reply and the end.
    r = https_get(ctx, srv, b"/")
    check(r.startswith(b"HTTP/1.1 200") and r.endswith(HELLO), f"Python ssl GET /: {r[:300]!r}")
    r = https_get(ctx, srv, b"/nope", hostname="www.example.test")
    check(r.startswith(b"HTTP/1.1 404"), f"GET /nope via certificate B: {r[:300]!r}")
    srv.assert_alive()


# --------------------------------------------------------------------------
# 5. Hostile and broken clients

def test_tls_bad_clients_plaintext(ctx):
    """On the TLS port: a plaintext HTTP request, random bytes, a TLS 1.0
    ClientHello and an SSLv2-style hello are each closed within 3 s (not by
    the 10 s handshake timeout), nothing served in plaintext; a TLS client
    is then served."""
    srv = tls_server(ctx, HTTP_LUA, args=["--workers", "2"], alpn="http/1.1")
    probes = [
        ("plaintext HTTP", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        ("random bytes", ctx.rng.randbytes(65536)),
        ("a TLS record of an unknown type", b"\x42\x03\x03\x00\x05hello"),
        ("a handshake record that is no ClientHello",
         b"\x16\x03\x01\x00\x08\x0b\x00\x00\x04\x00\x00\x00\x00"),
        ("an SSLv2-style hello", bytes.fromhex("802e0103010015000000100700c00500800300800100800800800600"
                                               "40040080020080") + b"\x00" * 16),
    ]
    for what, data in probes:
        s = connect(srv.addr)
        try:
            s.sendall(data)
            got, how, dt = wait_closed(ctx, s, 3)
        finally:
            s.close()
        check(how in ("eof", "reset"), f"{what}: the connection was not closed within 3s ({how}); "
              f"got {got[:80]!r}")
        check(b"HTTP/1." not in got and b"hello world" not in got,
              f"{what}: served in plaintext: {got[:200]!r}")
        check(got == b"" or got[:1] == b"\x15", f"{what}: the server sent something not an alert: "
              f"{got[:80]!r}")
    # A TLS 1.0 client (the default minimum is 1.2).
    r = s_client(ctx, srv.port, ["-servername", "localhost", "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                 steps=[(b"GET / HTTP/1.0\r\n\r\n", b"hello world")])
    check(r.results == [False] and not r.hung, f"a TLS 1.0 client: {r.tail()}")
    r = https_get(ctx, srv, b"/")
    check(r.startswith(b"HTTP/1.1 200") and r.endswith(HELLO), f"after the bad clients: {r[:300]!r}")
    srv.assert_alive()


def test_tls_bad_clients_handshake_timeout(ctx):
    """--tls-handshake-timeout 500: a client silent after connecting, one
    that sent half a ClientHello, and one that stops after its first
    flight are closed between 0.3 and 5 s; 40 silent ones at once too,
    while a good client is served; a finished handshake is not subject to
    the timeout (idle 1.5 s, then echoes)."""
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "2", "--tls-handshake-timeout", "500"])
    lo, hi = 0.3, 5.0 * ctx.factor

    def client_hello():
        t = RawTls(ctx, srv.addr)
        try:
            t.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = t.outb.read()
        check(len(hello) > 100 and hello[:1] == b"\x16", f"no ClientHello: {hello[:20]!r}")
        return t, hello

    # Silent
    s = connect(srv.addr)
    try:
        got, how, dt = wait_closed(ctx, s, 8)
    finally:
        s.close()
    check(how in ("eof", "reset") and lo <= dt <= hi,
          f"a silent client: ended by {how} after {dt:.2f}s, want closed in [{lo}, {hi}]s")
    # Half a ClientHello
    t, hello = client_hello()
    try:
        t.sock.sendall(hello[:len(hello) // 2])
        got, how, dt = wait_closed(ctx, t.sock, 8)
    finally:
        t.close()
    check(how in ("eof", "reset") and lo <= dt <= hi,
          f"half a ClientHello: ended by {how} after {dt:.2f}s, want closed in [{lo}, {hi}]s")
    # A whole ClientHello, then nothing (the server answered; the client's
    # Finished never comes).
    t, hello = client_hello()
    try:
        t.sock.sendall(hello)
        t0 = time.monotonic()
        data, how = read_until_closed(t.sock, 8 * ctx.factor)
        dt = time.monotonic() - t0
    finally:
        t.close()
    check(data[:1] == b"\x16", f"no ServerHello to a whole ClientHello: {data[:40]!r}")
    check(how in ("eof", "reset") and lo <= dt <= hi,
          f"a client stopped after its ClientHello: ended by {how} after {dt:.2f}s, "
          f"want closed in [{lo}, {hi}]s")
    # Many at once, a good client served meanwhile.
    socks = [connect(srv.addr) for _ in range(40)]
    try:
        t0 = time.monotonic()
        tls_echo_ok(ctx, srv)
        closed = [None] * len(socks)
        deadline = t0 + hi + 1
        while None in closed and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if closed[i] is None:
                    s.settimeout(0.01)
                    try:
                        if s.recv(4096) == b"":
                            closed[i] = time.monotonic() - t0
                    except socket.timeout:
                        pass
                    except ConnectionResetError:
                        closed[i] = time.monotonic() - t0
        n_open = closed.count(None)
        check(n_open == 0, f"{n_open} of {len(socks)} silent clients still open after {hi + 1:.1f}s")
        early = [x for x in closed if x < lo - 0.1]
        check(not early, f"silent clients closed too early: {early[:5]}")
    finally:
        for s in socks:
            s.close()
    # A finished handshake, idle past the handshake timeout.
    t = RawTls(ctx, srv.addr)
    try:
        t.handshake()
        t.echo(b"first\n")
        time.sleep(1.5)
        t.echo(b"after 1.5s idle\n")
    finally:
        t.close()
    srv.assert_alive()


def test_tls_bad_clients_bad_records(ctx):
    """After a good handshake and echo: a forged application-data record, a
    record longer than TLS allows, a record cut off by the client's FIN, a
    plaintext handshake record: each connection is closed within 3 s, and
    the server goes on serving."""
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "2"])
    rng = ctx.rng
    cases = [
        ("a forged application-data record (bad MAC)", b"\x17\x03\x03\x00\x30" + rng.randbytes(0x30), False),
        ("a record longer than 2^14+256", b"\x17\x03\x03\x48\x01" + rng.randbytes(0x4801), False),
        ("a record cut short by FIN", b"\x17\x03\x03\x40\x00" + rng.randbytes(100), True),
        ("a plaintext handshake record", b"\x16\x03\x03\x00\x04\x01\x00\x00\x00", False),
        ("an unknown record type", b"\x63\x03\x03\x00\x04abcd", False),
    ]
    for what, rec, fin in cases:
        for ver in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            t = RawTls(ctx, srv.addr, sslctx=client_context(maximum=ver, minimum=ver))
            try:
                t.handshake()
                t.echo(b"before the bad record\n")
                t.sock.sendall(rec)
                if fin:
                    t.sock.shutdown(socket.SHUT_WR)
                got, how, dt = wait_closed(ctx, t.sock, 3)
            finally:
                t.close()
            check(how in ("eof", "reset"),
                  f"{what} ({ver.name}): connection not closed within 3s ({how}, got {got[:40]!r})")
        tls_echo_ok(ctx, srv)
    srv.assert_alive()


def test_tls_bad_clients_renegotiation(ctx):
    """TLS 1.2 client-initiated renegotiation (s_client "R") is refused
    (an alert or a close): the line typed after it is not echoed and
    s_client ends by itself.  The server keeps serving."""
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "1"])
    m1, m2 = probe_line(), probe_line()
    r = s_client(ctx, srv.port, ["-servername", "localhost", "-tls1_2"],
                 steps=[(m1 + b"\n", m1), (b"R\n", None), (m2 + b"\n", m2)], timeout=5)
    check(r.results[0], f"TLS 1.2: no echo before the renegotiation: {r.tail()}")
    check("RENEGOTIATING" in r.text, f"s_client did not try to renegotiate: {r.tail()}")
    check(not r.results[2], f"TLS 1.2 renegotiation was accepted (the echo went on): {r.tail()}")
    check(not r.hung, f"s_client hung after the renegotiation attempt (the server neither "
          f"refused it with an alert nor closed the connection): {r.tail()}")
    srv.assert_alive()
    tls_echo_ok(ctx, srv)


def test_tls_key_update(ctx):
    """TLS 1.3 key updates (s_client "K": update and request the server's
    update; "k": update only) are handled: the echo goes on."""
    srv = tls_server(ctx, ECHO_LUA, args=["--workers", "1"])
    m1, m2, m3 = probe_line(), probe_line(), probe_line()
    r = s_client(ctx, srv.port, ["-servername", "localhost", "-tls1_3"],
                 steps=[(m1 + b"\n", m1), (b"K\n", None), (m2 + b"\n", m2), (b"k\n", None),
                        (m3 + b"\n", m3)], timeout=5)
    check(r.results == [True] * 5, f"TLS 1.3 with key updates: steps {r.results}: {r.tail()}")
    check(r.text.count("KEYUPDATE") >= 2, f"s_client did not update keys: {r.tail()}")
    check(r.rc == 0 and not r.hung, f"TLS 1.3 key updates: s_client exit {r.rc}: {r.tail()}")
    tls_echo_ok(ctx, srv)
    srv.assert_alive()


# --------------------------------------------------------------------------
# 6. redis-cli

def _redis_cli_tls():
    exe = shutil.which("redis-cli")
    if not exe:
        return None
    try:
        p = subprocess.run([exe, "--help"], capture_output=True, timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return exe if b"--tls" in p.stdout + p.stderr else None


def test_tls_redis_cli(ctx):
    """scripts/redis.lua over TLS with redis-cli --tls (SNI localhost):
    SET/GET, a 200 KB value through stdin (-x), and 20000 pipelined SETs
    (--pipe); skipped, with a note, without a TLS-capable redis-cli."""
    exe = _redis_cli_tls()
    if exe is None:
        ctx.note("redis-cli with --tls not found: test_tls_redis_cli skipped")
        return
    srv = tls_server(ctx, REDIS_LUA, args=["--workers", "2"], alpn="redis")
    base = [exe, "--tls", "--cacert", certs().ca, "-h", "127.0.0.1", "-p", str(srv.port),
            "--sni", "localhost"]

    def cli(*args, input=None):
        cmd = base + [str(a) for a in args]
        try:
            p = subprocess.run(cmd, capture_output=True, input=input, timeout=30 * ctx.factor)
        except subprocess.TimeoutExpired:
            fail(f"redis-cli did not finish: {' '.join(cmd)}")
        check(p.returncode == 0, f"`{' '.join(cmd)}` exited {p.returncode}: {p.stderr[-500:]!r}")
        return p.stdout

    check(cli("set", "k", "v").strip() == b"OK", "SET k v")
    got = cli("get", "k")
    check(got == b"v\n", f"GET k: {got!r}")
    big = ctx.rng.randbytes(100000).hex().encode()      # 200 KB
    check(cli("-x", "set", "big", input=big).strip() == b"OK", "SET big via -x")
    check(cli("strlen", "big").strip() == str(len(big)).encode(), "STRLEN big")
    got = cli("get", "big")
    check(got.rstrip(b"\n") == big, f"GET big: {len(got)} bytes, differs")
    n = 20000
    resp = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\nkey:%d\r\n$%d\r\nval:%d\r\n" %
                    (len(b"key:%d" % i), i, len(b"val:%d" % i), i) for i in range(n))
    out = cli("--pipe", input=resp).decode(errors="replace")
    check(re.search(rf"errors: 0, replies: {n}\b", out), f"--pipe of {n} SETs: {out[-300:]!r}")
    check(cli("get", "key:12345") == b"val:12345\n", "GET key:12345 after the pipe")
    got = cli("dbsize").strip()
    check(got == str(n + 2).encode(), f"DBSIZE {got!r}, want {n + 2}")
    srv.assert_alive()


def test_tls_conn_tls_fields(ctx):
    """conn.tls and conn.alpn in a handler: version, cipher, ALPN, SNI,
    resumption; false on the plain listener of the same server."""
    srv = Server(ctx, script=os.path.join(REPO, "tests", "scripts", "tls_info.lua"),
                 listen=[f"tls://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"],
                 args=tls_args("http/1.1,redis"))
    ctx.servers.append(srv)
    srv.start()
    (host, port), (phost, pport) = srv.addrs[0][1], srv.addrs[1][1]
    sc = client_context()
    sc.set_alpn_protocols(["redis"])
    with socket.create_connection((host, port), 5) as raw:
        with sc.wrap_socket(raw, server_hostname="foo.example.test") as s:
            s.sendall(b"?\n")
            got = s.recv(4096).decode()
    check(got.startswith("version=TLSv1.3 cipher=TLS_") and " alpn=redis sni=foo.example.test"
          " resumed=false conn.alpn=redis" in got, f"conn.tls: {got!r}")
    sc = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection((host, port), 5) as raw:
        with sc.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"?\n")
            got = s.recv(4096).decode()
    check(got.startswith("version=TLSv1.2 ") and " alpn=nil sni=localhost " in got
          and got.endswith("conn.alpn=nil peer=nil\n"), f"TLS 1.2, no ALPN: {got!r}")
    with socket.create_connection((phost, pport), 5) as s:
        s.sendall(b"?\n")
        got = s.recv(4096)
    check(got == b"plain\n", f"plain listener: {got!r}")


def _served_ou(addr):
    """The OU of the certificate a client without SNI gets."""
    sc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    sc.check_hostname = False
    sc.verify_mode = ssl.CERT_NONE
    with socket.create_connection(addr, 5) as raw:
        with sc.wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"],
                       input=der, capture_output=True, timeout=10)
    m = re.search(rb"OU\s*=\s*(\w+)", p.stdout)
    return m.group(1).decode() if m else p.stdout.decode()


def test_tls_sighup_reloads_certificates(ctx):
    """SIGHUP loads the certificate files again, all or nothing: new files
    serve the next handshakes; a broken one leaves the old ones serving
    (logged); connections already open go on."""
    c = certs()
    d = tempfile.mkdtemp(prefix="rl-tls-reload-")
    try:
        cert, key = os.path.join(d, "site.pem"), os.path.join(d, "site.key")
        shutil.copy(c.a_cert, cert)
        shutil.copy(c.a_key, key)
        srv = Server(ctx, script=ECHO_LUA, listen=[f"tls://127.0.0.1:{free_port()}"],
                     args=["--workers", "2", "--tls-cert", cert, "--tls-key", key])
        ctx.servers.append(srv)
        srv.start()
        addr = srv.addrs[0][1]
        check(_served_ou(addr) == "certA", "before: cert A")
        old = client_context().wrap_socket(socket.create_connection(addr, 5),
                                           server_hostname="localhost")
        old.sendall(b"x")
        check(old.recv(10) == b"x", "an open connection echoes")
        shutil.copy(c.b_cert, cert)
        shutil.copy(c.b_key, key)
        srv.proc.send_signal(signal.SIGHUP)
        check(wait_for(lambda: _served_ou(addr) == "certB", 5), "after SIGHUP: cert B")
        # A broken file: nothing changes.
        with open(cert, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        for _ in range(4):      # either worker
            check(_served_ou(addr) == "certB", "a bad certificate file: the old one serves")
        old.sendall(b"y")
        check(old.recv(10) == b"y", "the connection from before both reloads still echoes")
        old.close()
        check(srv.proc.poll() is None, "still running")
    finally:
        shutil.rmtree(d, True)

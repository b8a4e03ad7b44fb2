"""Outbound TLS (ringline.connect("tls://..."), the cosocket HTTP client's
https://, proxy.lua originating TLS to stunnel4) and the server side's
client certificates (--tls-client-ca) and ticket key rotation
(--tls-ticket-rotation).  The certificates are test_tls.py's (made at test
time: a root CA, A for localhost and 127.0.0.1, B for *.example.test
behind an intermediate, a client certificate)."""
import os
import shutil
import socket
import ssl
import subprocess
import time

from harness import ECHO_LUA, REPO, EnvCtx, Server, check, connect, fail, free_port, recv_exact, \
    recv_line, wait_for
from test_proxy import start_proxy
from test_tls import HTTP_LUA, certs, client_context, tls_server

TLS_CLIENT_LUA = os.path.join(REPO, "tests", "scripts", "tls_client.lua")
TLS_INFO_LUA = os.path.join(REPO, "tests", "scripts", "tls_info.lua")


def _client_server(ctx):
    srv = Server(ctx, script=TLS_CLIENT_LUA, args=["--workers", "1"])
    ctx.servers.append(srv)
    srv.start()
    return srv


def _ask(srv, line, timeout=10.0):
    """One command to tls_client.lua, its answer line."""
    with connect(srv.addr, timeout) as s:
        s.sendall(line.encode() + b"\n")
        return recv_line(s, timeout * 2, what="the answer to " + line).decode().rstrip("\n")


def test_tls_outbound_verification(ctx):
    """ringline.connect("tls://..."): verified against a CA file, the name
    checked (by default the address's host: 127.0.0.1 against the
    certificate's IP), echo byte-exact; the second connect resumes; a wrong
    name, an unknown CA, a plaintext server are refused with the reason;
    verify=0 connects without a check; a CA file that does not load is an
    error at once."""
    c = certs()
    up = tls_server(ctx, args=["--workers", "2"], alpn="http/1.1")
    port = up.addrs[0][1][1]
    cli = _client_server(ctx)
    a = f"tls://127.0.0.1:{port}"
    got = _ask(cli, f"{a} ca={c.ca} sni=localhost send=300000")
    check(got.startswith("open version=TLSv1.3 resumed=false peer=") and "OU=certA" in got
          and got.endswith(" echoed=300000"), f"verified connect: {got!r}")
    got = _ask(cli, f"{a} ca={c.ca} sni=localhost send=5000")
    check(" resumed=true " in got and got.endswith(" echoed=5000"),
          f"the second connect resumes the session: {got!r}")
    got = _ask(cli, f"{a} ca={c.ca} send=100000")
    check(got.startswith("open ") and got.endswith(" echoed=100000"),
          f"the IP address checked against the certificate: {got!r}")
    got = _ask(cli, f"{a} ca={c.ca} sni=foo.example.test alpn=http/1.1")
    check("OU=certB" in got and " alpn=http/1.1 " in got and got.endswith(" echoed=1000"),
          f"SNI picks certificate B (chain through the intermediate), ALPN: {got!r}")
    got = _ask(cli, f"{a} ca={c.ca} sni=wrong.example.org")
    check(got == "close tls handshake: certificate verify failed: hostname mismatch",
          f"wrong name: {got!r}")
    got = _ask(cli, f"{a}")
    check(got.startswith("close tls handshake: certificate verify failed: unable to get local issuer"),
          f"a CA the system does not know: {got!r}")
    got = _ask(cli, f"{a} verify=0 send=70000")
    check(got.startswith("open ") and " peer=nil " in got and got.endswith(" echoed=70000"),
          f"verify=0: {got!r}")
    got = _ask(cli, f"{a} ca=/nonexistent/ca.pem")
    check(got.startswith("error tls: cannot load CA file '/nonexistent/ca.pem'"), f"bad CA file: {got!r}")
    plain = Server(ctx, script=ECHO_LUA, args=["--workers", "1"])
    ctx.servers.append(plain)
    plain.start()
    got = _ask(cli, f"tls://127.0.0.1:{plain.port} ca={c.ca}")
    check(got.startswith("close "), f"a plaintext server: {got!r}")
    got = _ask(cli, f"{a} ca={c.ca} sni=localhost send=10")
    check(got.endswith(" echoed=10"), f"still connects after the failures: {got!r}")
    cli.assert_alive()
    up.assert_alive()


def test_tls_outbound_https_client(ctx):
    """ringline.http.client: https:// URLs, verified with ssl_ca, pooled."""
    c = certs()
    d = os.path.join(ctx.tmpdir, "www-tls")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "index.html"), "wb") as f:
        f.write(b"x" * 200000)
    srv = tls_server(ctx, script=HTTP_LUA, alpn="http/1.1",
                     env={"RINGLINE_HTTP_ROOT": d})
    port = srv.addrs[0][1][1]
    cli = _client_server(ctx)
    got = _ask(cli, f"https https://localhost:{port}/static/index.html ca={c.ca}")
    check(got == "status=200 bytes=200000", f"https GET: {got!r}")
    got = _ask(cli, f"https https://localhost:{port}/static/index.html")
    check(got.startswith("error ") and "certificate verify failed" in got,
          f"https without the CA: {got!r}")


def _py_tls(addr, cert=None, key=None, hostname="localhost"):
    sc = client_context()
    if cert:
        sc.load_cert_chain(cert, key)
    raw = socket.create_connection(addr, 5)
    s = sc.wrap_socket(raw, server_hostname=hostname)
    s.sendall(b"?\n")
    return s.recv(4096).decode(), s


def test_tls_client_certificates(ctx):
    """--tls-client-ca: a client with a certificate the CA signed is let in,
    its subject in conn.tls.peer_subject; one without is refused (required,
    the default) or let in without a subject (--tls-client-verify
    optional); ringline's own client presents cert/key."""
    c = certs()
    srv = Server(ctx, script=TLS_INFO_LUA, listen=[f"tls://127.0.0.1:{free_port()}"],
                 args=["--tls-cert", c.a_cert, "--tls-key", c.a_key, "--tls-client-ca", c.ca])
    ctx.servers.append(srv)
    srv.start()
    addr = srv.addrs[0][1]
    got, s = _py_tls(addr, c.client_cert, c.client_key)
    s.close()
    check("peer=CN=ringline test client,OU=client,O=ringline test" in got,
          f"a client certificate: {got!r}")
    try:
        got, s = _py_tls(addr)
        s.close()
        fail(f"no client certificate was let in: {got!r}")
    except (ssl.SSLError, ConnectionError, OSError) as e:
        check("certificate" in str(e).lower() or isinstance(e, (ConnectionError, ssl.SSLEOFError)),
              f"refused for the missing certificate: {e!r}")
    opt = Server(ctx, script=TLS_INFO_LUA, listen=[f"tls://127.0.0.1:{free_port()}"],
                 args=["--tls-cert", c.a_cert, "--tls-key", c.a_key, "--tls-client-ca", c.ca,
                       "--tls-client-verify", "optional"])
    ctx.servers.append(opt)
    opt.start()
    got, s = _py_tls(opt.addrs[0][1])
    s.close()
    check(got.endswith(" peer=nil\n"), f"optional, none given: {got!r}")
    got, s = _py_tls(opt.addrs[0][1], c.client_cert, c.client_key)
    s.close()
    check("OU=client" in got, f"optional, one given: {got!r}")
    # ringline as the client, against an echo that requires a certificate.
    echo = Server(ctx, script=ECHO_LUA, listen=[f"tls://127.0.0.1:{free_port()}"],
                  args=["--tls-cert", c.a_cert, "--tls-key", c.a_key, "--tls-client-ca", c.ca])
    ctx.servers.append(echo)
    echo.start()
    cli = _client_server(ctx)
    a = f"tls://127.0.0.1:{echo.addrs[0][1][1]}"
    got = _ask(cli, f"{a} ca={c.ca} cert={c.client_cert} key={c.client_key} send=50000")
    check(got.startswith("open ") and got.endswith(" echoed=50000"), f"ringline with a client cert: {got!r}")
    got = _ask(cli, f"{a} ca={c.ca} send=50000")
    check(got.startswith("close "), f"ringline without one is refused: {got!r}")
    got = _ask(cli, f"{a} ca={c.ca} cert={c.client_cert}")
    check(got.startswith("error tls: a client certificate needs both"), f"cert without key: {got!r}")
    for s in (srv, opt, echo, cli):
        s.assert_alive()


def test_tls_ticket_rotation(ctx):
    """Ticket keys are the process's, rotated every --tls-ticket-rotation
    seconds: a ticket resumes on either worker right away and after one
    rotation, not after three."""
    srv = tls_server(ctx, args=["--workers", "2", "--tls-ticket-rotation", "1"])
    addr = srv.addrs[0][1]
    sc = client_context()

    def once(sess):
        with socket.create_connection(addr, 5) as raw:
            with sc.wrap_socket(raw, server_hostname="localhost", session=sess) as s:
                s.sendall(b"x")
                check(s.recv(1) == b"x", "echo")
                time.sleep(0.05)            # the ticket after the handshake
                return s.session, s.session_reused

    sess, reused = once(None)
    check(not reused, "first: a full handshake")
    for i in range(4):
        sess2, reused = once(sess)
        check(reused, f"resumed right away ({i})")
    sess, _ = once(None)
    time.sleep(1.3)
    _, reused = once(sess)
    check(reused, "resumed after one rotation (the key before the newest)")
    sess, _ = once(None)
    time.sleep(3.6)
    _, reused = once(sess)
    check(not reused, "not resumed three rotations later (the key is gone)")


def _stunnel(ctx, accept_port, connect_port):
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if not exe:
        fail("stunnel4 not found (apt-get install stunnel4; `make deps` installs it)")
    c = certs()
    conf = os.path.join(ctx.tmpdir, f"stunnel-{accept_port}.conf")
    with open(conf, "w") as f:
        f.write(f"foreground = yes\npid =\ndebug = 4\n[up]\naccept = 127.0.0.1:{accept_port}\n"
                f"connect = 127.0.0.1:{connect_port}\ncert = {c.a_cert}\nkey = {c.a_key}\n")
    log = open(os.path.join(ctx.tmpdir, f"stunnel-{accept_port}.log"), "wb")
    p = subprocess.Popen([exe, conf], stdout=log, stderr=subprocess.STDOUT)

    def up():
        try:
            socket.create_connection(("127.0.0.1", accept_port), 0.5).close()
            return True
        except OSError:
            return False
    if not wait_for(up, 10):
        p.kill()
        fail("stunnel did not start")
    return p


def test_tls_proxy_originates_tls_to_stunnel(ctx):
    """proxy.lua with a tls:// upstream: stunnel4 terminates TLS in front of
    a plain echo; bytes byte-exact through both; an upstream whose name does
    not verify is refused with the reason logged, the client closed.  And
    proxy.lua listening on tls:// terminates TLS in front of a plain
    upstream."""
    c = certs()
    echo = Server(ctx, script=ECHO_LUA, args=["--workers", "1"])
    ctx.servers.append(echo)
    echo.start()
    sport = free_port()
    st = _stunnel(ctx, sport, echo.port)
    try:
        px = start_proxy(ctx, [f"tls://127.0.0.1:{sport}"], env={"RINGLINE_PROXY_TLS_CA": c.ca,
                                                                 "RINGLINE_PROXY_TLS_SNI": "localhost"})
        payload = os.urandom(1 << 20)
        with connect(px.addr, 10) as s:
            s.sendall(payload)
            got = recv_exact(s, len(payload), 20, "the echo through proxy and stunnel")
        check(got == payload, "byte-exact through proxy.lua -> TLS -> stunnel -> echo")
        bad = start_proxy(ctx, [f"tls://127.0.0.1:{sport}"], name="badproxy",
                          env={"RINGLINE_PROXY_TLS_CA": c.ca,
                               "RINGLINE_PROXY_TLS_SNI": "wrong.example.org"})
        with connect(bad.addr, 10) as s:
            s.sendall(b"hello")
            s.settimeout(10)
            try:
                data = s.recv(100)
            except ConnectionError:
                data = b""
        check(data == b"", f"the client of an upstream that does not verify is closed: {data!r}")
        check(wait_for(lambda: "certificate verify failed: hostname mismatch" in bad.stderr(), 5),
              f"the reason is logged: {bad.stderr_tail()}")
    finally:
        st.terminate()
        st.wait(5)
    # Terminating: TLS clients, a plain upstream.
    term = start_proxy(ctx, [f"tcp://127.0.0.1:{echo.port}"], name="tlsproxy",
                       listen=f"tls://127.0.0.1:{free_port()}",
                       args=["--tls-cert", c.a_cert, "--tls-key", c.a_key])
    raw = socket.create_connection(term.addrs[0][1], 5)
    with client_context().wrap_socket(raw, server_hostname="localhost") as s:
        payload = os.urandom(300000)
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            d = s.recv(65536)
            if not d:
                break
            got += d
    check(got == payload, "byte-exact through a TLS-terminating proxy.lua")


def test_tls_http_proxy_both_sides(ctx):
    """http_proxy.lua on a tls:// listener: HTTPS clients, X-Forwarded-Proto
    https to a plain upstream; and to a tls:// upstream (http.lua over TLS)
    verified with RINGLINE_HTTP_PROXY_TLS_CA, refused (502) with the wrong
    name."""
    from http_upstream import Upstream
    from test_http_proxy import PROXY_LUA
    c = certs()
    up = Upstream("a")
    try:
        px = Server(EnvCtx(ctx, {"RINGLINE_HTTP_PROXY_UPSTREAMS": up.addr}), script=PROXY_LUA,
                    listen=[f"tls://127.0.0.1:{free_port()}"],
                    args=["--workers", "1", "--tls-cert", c.a_cert, "--tls-key", c.a_key])
        ctx.servers.append(px)
        px.start()
        raw = socket.create_connection(px.addrs[0][1], 5)
        with client_context().wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        text = got.decode(errors="replace").lower()
        check(text.startswith("http/1.1 200") and "x-forwarded-proto: https\r\n" in text,
              f"HTTPS client, X-Forwarded-Proto: {text[:600]!r}")
    finally:
        up.stop()
    d = os.path.join(ctx.tmpdir, "www-px")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f.bin"), "wb") as f:
        f.write(os.urandom(150000))
    web = tls_server(ctx, script=HTTP_LUA, env={"RINGLINE_HTTP_ROOT": d})
    wport = web.addrs[0][1][1]
    for sni, want in (("localhost", b"200"), ("wrong.example.org", b"502")):
        px = Server(EnvCtx(ctx, {"RINGLINE_HTTP_PROXY_UPSTREAMS": f"tls://127.0.0.1:{wport}",
                                 "RINGLINE_HTTP_PROXY_TLS_CA": c.ca,
                                 "RINGLINE_HTTP_PROXY_TLS_SNI": sni}),
                    script=PROXY_LUA, args=["--workers", "1"])
        ctx.servers.append(px)
        px.start()
        with connect(px.addr, 10) as s:
            s.sendall(b"GET /static/f.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            s.settimeout(10)
            got = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
        check(got[9:12] == want, f"upstream over TLS, SNI {sni}: {got[:200]!r}")
        if want == b"200":
            with open(os.path.join(d, "f.bin"), "rb") as f:
                check(got.endswith(f.read()), "the body byte-exact")
        else:
            check(wait_for(lambda: "hostname mismatch" in px.stderr(), 5),
                  f"the reason is logged: {px.stderr_tail()}")

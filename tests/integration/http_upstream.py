"""A test HTTP/1.1 upstream for the proxy and client tests: keep-alive, chunked
both ways, slow and big answers, and what it was sent.

Paths:
  /hello        "hello from NAME"
  /headers      the request head it received, as the body
  /chunked      a chunked body of 5 chunks ("chunk 0\n" ...)
  /big?n=N      N bytes (a repeating pattern), Content-Length
  /slow?ms=M    sleeps M ms, then "slow"
  /redirect     302 to /hello
  /echo         the request body back (Content-Length or chunked in,
                chunked out if it came chunked)
  /close        "bye" with no length: the body ends at the close
"""

import socket
import threading
import time
import urllib.parse


def pattern(n):
    block = bytes(range(256)) * 64
    out = bytearray()
    while len(out) < n:
        out += block
    return bytes(out[:n])


class Upstream:
    def __init__(self, name):
        self.name = name
        self.lst = socket.socket()
        self.lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lst.bind(("127.0.0.1", 0))
        self.lst.listen(256)
        self.port = self.lst.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.requests = 0
        self.heads = []
        self.socks = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        """Stops listening and drops every open connection."""
        self.stopped = True
        try:
            self.lst.close()
        except OSError:
            pass
        for s in list(self.socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.lst.accept()
            except OSError:
                return
            self.connections += 1
            self.socks.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            while not self.stopped:
                line = f.readline()
                if not line:
                    return
                head = [line]
                while True:
                    h = f.readline()
                    head.append(h)
                    if h in (b"\r\n", b"\n", b""):
                        break
                self.requests += 1
                raw = b"".join(head)
                self.heads.append(raw)
                method, target, _ = line.decode().split(" ", 2)
                hdrs = {}
                for h in head[1:-1]:
                    k, _, v = h.decode().partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                body = b""
                if hdrs.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int(f.readline().split(b";")[0], 16)
                        if size == 0:
                            while f.readline() not in (b"\r\n", b""):
                                pass
                            break
                        body += f.read(size)
                        f.read(2)
                elif "content-length" in hdrs:
                    body = f.read(int(hdrs["content-length"]))
                if not self._answer(c, method, target, hdrs, raw, body):
                    return
        except (OSError, ValueError):
            return
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _send(self, c, status, body, extra=b"", length=True):
        head = f"HTTP/1.1 {status}\r\n".encode() + extra
        if length:
            head += f"Content-Length: {len(body)}\r\n".encode()
        c.sendall(head + b"\r\n" + body)

    def _answer(self, c, method, target, hdrs, raw, body):
        u = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(u.query))
        path = u.path
        if path == "/hello":
            self._send(c, "200 OK", f"hello from {self.name}".encode(),
                       b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n")
        elif path == "/headers":
            self._send(c, "200 OK", raw)
        elif path == "/chunked":
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for k in range(5):
                piece = f"chunk {k}\n".encode()
                c.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.01)
            c.sendall(b"0\r\n\r\n")
        elif path == "/big":
            n = int(q.get("n", "1000"))
            c.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
            if method == "HEAD":
                # No body after a HEAD response's head (RFC 9110 9.3.2):
                # bytes here would be read as the next response.
                return True
            data = pattern(n)
            for i in range(0, n, 65536):
                c.sendall(data[i:i + 65536])
        elif path == "/slow":
            time.sleep(int(q.get("ms", "1000")) / 1000)
            self._send(c, "200 OK", b"slow")
        elif path == "/redirect":
            self._send(c, "302 Found", b"", b"Location: /hello\r\n")
        elif path == "/echo":
            if hdrs.get("transfer-encoding", "").lower() == "chunked":
                c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(0, len(body), 3000):
                    piece = body[i:i + 3000]
                    c.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                c.sendall(b"0\r\n\r\n")
            else:
                self._send(c, "200 OK", body)
        elif path == "/close":
            c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbye")
            return False
        else:
            self._send(c, "404 Not Found", b"no such path\n")
        return True

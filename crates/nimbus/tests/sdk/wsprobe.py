"""A bare websocket client for the dialect tests: the provider SDKs' venvs carry no websocket library, and a
console URL is only proven by opening it the way a browser would, with no credentials but the URL."""

import base64
import hashlib
import os
import socket
import urllib.parse


def open_console(url):
    """A bare websocket handshake (no library, no credentials): the status line, and the first frame's
    payload after a 101."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.scheme == "ws", url
    target = parsed.path + ("?" + parsed.query if parsed.query else "")
    with socket.create_connection((parsed.hostname, parsed.port or 80), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {target} HTTP/1.1\r\nHost: {parsed.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        reader = sock.makefile("rb")
        status = reader.readline().decode().strip()
        headers = {}
        while (line := reader.readline().decode().strip()):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if " 101 " not in status + " ":
            return status, None
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        assert headers.get("sec-websocket-accept") == accept, headers
        first, length = reader.read(2)
        assert first & 0x0F == 0x2, f"a binary frame: {first:#x}"
        length &= 0x7F
        if length == 126:
            length = int.from_bytes(reader.read(2), "big")
        elif length == 127:
            length = int.from_bytes(reader.read(8), "big")
        return status, reader.read(length)

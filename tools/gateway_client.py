"""The installer's laptop talking to a gateway: its HTTP API and its CoAP port.

``wattshare meter provision`` asks the gateway what it knows about a device
(``GET /api/devices/ID`` of the status site, JSON) and sends it the device-signed
commissioning record (CoAP ``POST /c``). Both go over the network as any tool on another
machine would: never to the gateway's database. The CoAP framing is the shared sans-IO
core (``wattcore.coap``), with RFC 7252 retransmission timing on a plain UDP socket.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request

from wattcore import coap, exchange
from wattcore.errors import DecodeError

from tools.errors import InstallError


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port)."""
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(text, p)
    if not host:
        raise InstallError(f"--gateway {text!r}: expected HOST or HOST:PORT")
    return host, port


def _port(text: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise InstallError(f"--gateway {text!r}: the port {value!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise InstallError(f"--gateway {text!r}: port {port} is not in 1..65535")
    return port


class Gateway:
    """A gateway at ``host``: CoAP on ``coap_port``, its HTTP API at ``http_url``."""

    def __init__(self, host: str, coap_port: int, http_url: str):
        self.host = host
        self.coap_port = coap_port
        self.http_url = http_url.rstrip("/")

    # -- HTTP -----------------------------------------------------------------------------

    def _get(self, path: str, timeout: float = 3.0):
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            raise InstallError(f"the gateway's HTTP API answered {e.code} to {path}") from None
        except (OSError, ValueError) as e:
            raise InstallError(f"the gateway's HTTP API at {self.http_url} is unreachable "
                               f"({e})") from None

    def http_reachable(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/healthz", timeout=2.0) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False

    def device(self, device_id: str) -> dict:
        """What the gateway knows of a device (``/api/devices/ID``)."""
        return self._get(f"/api/devices/{device_id}")

    # -- CoAP ---------------------------------------------------------------------------

    def _socket(self) -> tuple[socket.socket, tuple]:
        try:
            info = socket.getaddrinfo(self.host, self.coap_port, type=socket.SOCK_DGRAM)[0]
        except OSError as e:
            raise InstallError(f"--gateway {self.host}: no such host ({e})") from None
        sock = socket.socket(info[0], socket.SOCK_DGRAM)
        sock.connect(info[4])  # ICMP port unreachable then shows as ConnectionRefused
        return sock, info[4]

    def coap_ping(self, attempts: int = 3, timeout: float = 1.0) -> bool:
        """True when something speaks CoAP on the port (an empty CON is answered RST)."""
        sock, _ = self._socket()
        with sock:
            for _ in range(attempts):
                mid = int.from_bytes(os.urandom(2), "big")
                try:
                    sock.send(coap.encode(coap.CON, coap.EMPTY, mid))
                    sock.settimeout(timeout)
                    while True:
                        m = coap.decode(sock.recv(2048))
                        if m.mid == mid and m.mtype in (coap.RST, coap.ACK):
                            return True
                except (TimeoutError, DecodeError):
                    continue
                except OSError:
                    return False  # refused: nothing listens on the port
        return False

    def post(self, path: str, payload: bytes) -> tuple[int, dict]:
        """CoAP CON POST of a CBOR payload with RFC 7252 retransmissions ->
        (response code, decoded response map)."""
        sock, _ = self._socket()
        mid = int.from_bytes(os.urandom(2), "big")
        token = os.urandom(4)
        options = coap.uri_path_options(path)
        options.append((coap.OPT_CONTENT_FORMAT, coap.uint_option(exchange.CONTENT_FORMAT_CBOR)))
        msg = coap.encode(coap.CON, coap.POST, mid, token, options, payload,
                          max_size=exchange.MAX_PAYLOAD + 64)
        initial = coap.initial_timeout_ms(int.from_bytes(os.urandom(2), "big"))
        with sock:
            for attempt in range(coap.MAX_RETRANSMIT + 1):
                try:
                    sock.send(msg)
                except OSError:
                    break
                deadline = time.monotonic() + coap.timeout_ms(initial, attempt) / 1000
                while (remaining := deadline - time.monotonic()) > 0:
                    sock.settimeout(remaining)
                    try:
                        m = coap.decode(sock.recv(2048), exchange.MAX_PAYLOAD + 64)
                    except (TimeoutError, DecodeError):
                        continue
                    except OSError:
                        break
                    if m.mtype == coap.ACK and m.mid == mid and m.code == coap.EMPTY:
                        deadline = time.monotonic() + coap.MAX_TRANSMIT_WAIT_MS / 1000
                        continue  # separate response follows
                    if m.token == token and m.code != coap.EMPTY:
                        if m.mtype == coap.CON:
                            sock.send(coap.encode(coap.ACK, coap.EMPTY, m.mid))
                        try:
                            resp = exchange.decode_response(m.payload) if m.payload else {}
                        except DecodeError:
                            resp = {}
                        return m.code, resp
        raise InstallError(f"no answer from the gateway's CoAP port {self.host}:"
                           f"{self.coap_port} to POST /{path}")


def code_text(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"

"""The installer's laptop talking to a gateway: its HTTP API and its CoAP port.

``wattshare meter provision`` asks the gateway what it knows about a device
(``GET /api/devices/ID`` of the status site, JSON) and sends it the device-signed
commissioning record (CoAP ``POST /c``, with :mod:`tools.coap_client`). Both go over the
network as any tool on another machine would: never to the gateway's database.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from wattcore import exchange

from tools import coap_client
from tools.errors import InstallError


def metrics(http_url: str, timeout: float = 10.0) -> dict[str, float]:
    """The gateway's ``/metrics`` (Prometheus text) as {'name{labels}': value}."""
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=timeout) as reply:
        text = reply.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out

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

    # -- CoAP (tools.coap_client) ---------------------------------------------------------

    def coap_reachable(self) -> bool:
        """True when the gateway answers a CoAP request (GET /t, its time) on its port."""
        try:
            answer = coap_client.request(self.host, self.coap_port, "GET", exchange.PATH_TIME,
                                         ack_timeout_s=0.5, max_retransmit=1)
        except coap_client.GatewayUnreachable:
            return False
        return answer.code == "2.05"

    def post(self, path: str, payload: bytes) -> coap_client.Answer:
        """CoAP CON POST of a CBOR payload (``POST /c``): the gateway's answer."""
        try:
            return coap_client.request(self.host, self.coap_port, "POST", path, payload)
        except coap_client.GatewayUnreachable as e:
            raise InstallError(str(e)) from None

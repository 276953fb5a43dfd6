"""A small blocking CoAP client for the installer's tools (one confirmable request to a
gateway at a time): the meter's own framing (:mod:`wattcore.coap`), RFC 7252
retransmission, the gateway's response map decoded (:mod:`wattcore.exchange`).

    answer = coap_client.request("gateway.local", 5683, "POST", "c", signed_record)
    answer.code, answer.reason, answer.body    # "2.04", None, {"time": ...}

A gateway that never answers raises :class:`GatewayUnreachable`, whose message says what
to check; any answer, refusals included, is returned (the caller explains the reason).
Payloads stay single datagrams (no block-wise transfer), as the gateway expects.
"""

from __future__ import annotations

import os
import socket
import time
from typing import NamedTuple

from wattcore import coap, exchange
from wattcore.errors import DecodeError

from tools.errors import ToolsError

METHODS = {"GET": coap.GET, "POST": coap.POST}


class GatewayUnreachable(ToolsError):
    """No CoAP answer from the gateway: the message names the address and what to check."""


class Answer(NamedTuple):
    code: str  # "2.04"
    reason: str | None  # the gateway's reason token, if any
    body: dict  # the decoded response map ({} when there is none)
    raw: coap.Message


def request(host: str, port: int, method: str, path: str, payload: bytes = b"",
            ack_timeout_s: float = 2.0, max_retransmit: int = coap.MAX_RETRANSMIT) -> Answer:
    """One CON request; the response (piggybacked or separate) as an :class:`Answer`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise GatewayUnreachable(f"gateway {host}:{port}: cannot resolve the address ({e}); "
                                 "check the gateway's host name or IP address") from None
    family, _, _, _, address = infos[0]
    mid = int.from_bytes(os.urandom(2), "big")
    token = os.urandom(4)
    options = coap.uri_path_options(path)
    if payload:
        options.append((coap.OPT_CONTENT_FORMAT,
                        coap.uint_option(exchange.CONTENT_FORMAT_CBOR)))
    message = coap.encode(coap.CON, METHODS[method], mid, token, options, payload,
                          max_size=exchange.MAX_PAYLOAD + 64)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        timeout = ack_timeout_s
        waited = 0.0
        separate = False
        for _ in range(max_retransmit + 1):
            if not separate:
                sock.send(message)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    break
                except OSError:  # ICMP port unreachable: nothing listens there (yet)
                    time.sleep(min(left, 0.05))
                    continue
                answer = _match(sock, data, mid, token)
                if answer == "separate":
                    separate = True
                    deadline = time.monotonic() + coap.MAX_TRANSMIT_WAIT_MS / 1000
                elif answer is not None:
                    return answer
            waited += timeout
            timeout *= 2
    raise GatewayUnreachable(
        f"no answer from the gateway at {host}:{port} (CoAP over UDP) in {waited:.0f} s: "
        "check the address and port, that `wattshare gateway run` runs there, and that no "
        f"firewall drops UDP port {port}")


def _match(sock, data, mid, token):
    try:
        m = coap.decode(data, exchange.MAX_PAYLOAD + 64)
    except DecodeError:
        return None
    if m.mtype == coap.ACK and m.mid == mid and m.code == coap.EMPTY:
        return "separate"
    if m.token != token or m.code == coap.EMPTY:
        return None
    if m.mtype == coap.CON:
        sock.send(coap.encode(coap.ACK, coap.EMPTY, m.mid))
    body = {}
    if m.payload:
        try:
            body = exchange.decode_response(m.payload)
        except DecodeError:
            body = {}
    return Answer(coap.code_str(m.code), body.get("reason"), body, m)

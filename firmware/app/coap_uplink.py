# Sends spooled readings to the gateway: CoAP CON POST /r with RFC 7252
# retransmission timing, NSTART 1, batches of up to batch_size while catching up,
# and the device action of docs/protocol.md section 4.3 for every response code.
# GET /t while the clock is not trusted; then, when an enroller is given and has
# not succeeded yet, POST /e (app.enroller) before any reading.
#
# Ports:
#   udp.send(datagram)                              to the gateway
#   await udp.recv(timeout_ms) -> bytes or None     from the gateway
#   clock.monotonic_ms(), await clock.sleep_ms(ms)
#   random_bytes(n)
from wattcore import coap, enrolment, exchange
from wattcore.const import const
from wattcore.errors import DecodeError

BACKOFF_FIRST_MS = const(30000)  # 5.00 and no response: 30 s doubling ...
BACKOFF_MAX_MS = const(600000)  # ... to 10 min
BACKOFF_PERSON_MS = const(600000)  # 4.01, 4.03, 4.04, 4.05, 4.15: 10 min
DEFAULT_MAX_AGE_S = const(60)  # 5.03 without Max-Age
IDLE = None  # step() result: nothing to send until a new reading arrives

_CBOR = coap.uint_option(exchange.CONTENT_FORMAT_CBOR)
# response codes after which readings are kept and sending pauses for a person
_PERSON = (exchange.UNAUTHORIZED, exchange.FORBIDDEN, exchange.NOT_FOUND,
           exchange.METHOD_NOT_ALLOWED, exchange.UNSUPPORTED_FORMAT)


class CoapUplink:
    def __init__(self, udp, clock, device_clock, spool, random_bytes, batch_size=8, log=None,
                 enroller=None):
        self._udp = udp
        self._clock = clock
        self._device_clock = device_clock
        self._spool = spool
        self._random = random_bytes
        self._batch_size = batch_size
        self._limit = batch_size  # readings per message now (4.13 / max_batch lower it)
        self._single = 0  # messages left to send one reading each (finding a bad one)
        self._backoff = BACKOFF_FIRST_MS
        self._mid = int.from_bytes(random_bytes(2), "big")
        self._log = log or (lambda msg: None)
        self._enroller = enroller
        self.alarm = False  # set on 4.09 seq-reuse: needs a technician
        self.stats = {"sent": 0, "acked": 0, "quarantined": 0, "no_response": 0, "messages": 0}
        self.last_code = None

    # ---- one CoAP exchange ----------------------------------------------------------

    def _next_mid(self):
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    async def request(self, code, path, payload=b""):
        # -> decoded response Message, or None after MAX_RETRANSMIT (or a Reset)
        mid = self._next_mid()
        token = self._random(4)
        options = coap.uri_path_options(path)
        if payload:
            options.append((coap.OPT_CONTENT_FORMAT, _CBOR))
        msg = coap.encode(coap.CON, code, mid, token, options, payload,
                          max_size=exchange.MAX_PAYLOAD + 64)
        initial = coap.initial_timeout_ms(int.from_bytes(self._random(2), "big"))
        separate = False
        self.stats["messages"] += 1
        for attempt in range(coap.MAX_RETRANSMIT + 1):
            self._udp.send(msg)
            deadline = self._clock.monotonic_ms() + coap.timeout_ms(initial, attempt)
            while True:
                remaining = deadline - self._clock.monotonic_ms()
                if remaining <= 0:
                    break
                data = await self._udp.recv(remaining)
                if data is None:
                    continue
                try:
                    m = coap.decode(data, exchange.MAX_PAYLOAD + 64)
                except DecodeError:
                    continue  # not CoAP: drop it
                if m.mid == mid and m.mtype == coap.RST:
                    return None
                if m.mid == mid and m.mtype == coap.ACK:
                    if m.code == coap.EMPTY:
                        # the response comes later in its own message
                        separate = True
                        deadline = self._clock.monotonic_ms() + coap.MAX_TRANSMIT_WAIT_MS
                    elif m.token == token:
                        return m
                elif separate and m.token == token and m.mtype in (coap.CON, coap.NON):
                    if m.mtype == coap.CON:
                        self._udp.send(coap.encode(coap.ACK, coap.EMPTY, m.mid))
                    return m
            if separate:
                return None
        return None

    # ---- the device side of the protocol ----------------------------------------------

    def _response_map(self, m):
        if m.payload:
            try:
                return exchange.decode_response(m.payload)
            except DecodeError:
                pass
        return {}

    async def sync_time(self):
        m = await self.request(coap.GET, exchange.PATH_TIME)
        if m is None:
            return False
        resp = self._response_map(m)
        if "time" in resp and m.code == exchange.CONTENT:
            self._device_clock.set(resp["time"], "gateway")
            return True
        return False

    async def step(self):
        # One unit of work. -> ms to wait before the next step (0: go on now), or
        # IDLE when the spool is empty.
        if not self._device_clock.trusted:
            if await self.sync_time():
                return 0
            return self._back_off()
        if self._enroller is not None and not self._enroller.done:
            return await self._enrol()
        limit = 1 if self._single else self._limit
        entries = self._spool.peek(limit)
        if not entries:
            return IDLE
        payload = exchange.encode_batch([e.data for e in entries])
        self.stats["sent"] += len(entries)
        m = await self.request(coap.POST, exchange.PATH_READINGS, payload)
        if m is None:
            self.stats["no_response"] += 1
            self.last_code = None
            self._log("uplink: no response for %d readings from seq=%d"
                      % (len(entries), entries[0].seq))
            return self._back_off()
        return self.handle_response(entries, m)

    async def _enrol(self):
        e = self._enroller
        m = await self.request(coap.POST, exchange.PATH_ENROL, e.request(self._device_clock.now()))
        if m is None:
            self._log("enrolment: no answer from the gateway; retrying")
            return self._back_off()
        self.last_code = m.code
        resp = self._response_map(m)
        if "time" in resp:
            self._device_clock.set(resp["time"], "gateway")
        outcome = e.handle(m.code, resp)
        if outcome == enrolment.ENROLLED or outcome == enrolment.REGISTERED:
            self._backoff = BACKOFF_FIRST_MS
            return 0
        if outcome == enrolment.REFUSED:
            return BACKOFF_PERSON_MS
        if exchange.device_action(m.code) == exchange.ACT_WAIT:
            age = m.option(coap.OPT_MAX_AGE)
            return (coap.uint_value(age) if age is not None else DEFAULT_MAX_AGE_S) * 1000
        return self._back_off()

    def _back_off(self):
        delay = self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_MS)
        return delay

    def _drop_acked(self, entries, resp):
        if "ack" in resp:
            n = self._spool.ack_through(entries, resp["ack"])
            self.stats["acked"] += n
            return n
        return 0

    def _quarantine_rejected(self, resp):
        rejected = resp.get("rejected")
        for e in self._spool.peek(1):
            if e.seq == rejected:
                self._spool.quarantine(e)
                self.stats["quarantined"] += 1
                return True
        return False

    def handle_response(self, entries, m):
        # The action table of docs/protocol.md 4.3. -> ms to wait (0: go on now)
        code = m.code
        self.last_code = code
        resp = self._response_map(m)
        if "time" in resp:
            self._device_clock.set(resp["time"], "gateway")
        action = exchange.device_action(code)
        if action == exchange.ACT_ACKED:
            self._backoff = BACKOFF_FIRST_MS
            if "ack" not in resp:  # 2.04 says every reading of the message is stored
                resp["ack"] = entries[-1].seq
            self._drop_acked(entries, resp)
            if self._single:
                self._single -= 1
            hint = resp.get("max_batch")
            if hint:
                self._limit = max(1, min(self._batch_size, hint))
            return 0
        if action == exchange.ACT_DROP_REJECTED:
            self._backoff = BACKOFF_FIRST_MS
            self._drop_acked(entries, resp)
            reason = resp.get("reason", "")
            if code == exchange.CONFLICT:
                self.alarm = True
                self._log("uplink: ALARM 4.09 %s: the gateway holds other bytes for seq=%r"
                          % (reason, resp.get("rejected")))
            self._log("uplink: %s %s rejected seq=%r" % (coap.code_str(code), reason,
                                                          resp.get("rejected")))
            if self._quarantine_rejected(resp):
                self._single = max(0, self._single - 1)
                return 0
            if code == exchange.BAD_REQUEST:
                # no `rejected`: one reading per message finds the bad one
                if len(entries) == 1 and self._quarantine_rejected({"rejected": entries[0].seq}):
                    self._single = max(0, self._single - 1)
                    return 0
                self._single = len(entries)
                return 0
            return self._back_off()  # nothing identified: keep, retry later
        if action == exchange.ACT_SPLIT:
            if len(entries) <= 1:
                return self._back_off()  # one reading too big: nothing smaller to send
            fit = len(entries) // 2
            size1 = m.option(coap.OPT_SIZE1)
            if size1 is not None:
                per = 0
                for e in entries:
                    per = max(per, len(e.data))
                fit = (coap.uint_value(size1) - 3) // per
            self._limit = max(1, min(fit, len(entries) - 1))
            return 0
        if action == exchange.ACT_WAIT:
            age = m.option(coap.OPT_MAX_AGE)
            seconds = coap.uint_value(age) if age is not None else DEFAULT_MAX_AGE_S
            self._log("uplink: 5.03 %s, retry in %d s" % (resp.get("reason", ""), seconds))
            return seconds * 1000
        if code in _PERSON:
            self._log("uplink: %s %s: keeping %d readings, backing off"
                      % (coap.code_str(code), resp.get("reason", ""), len(self._spool)))
            return BACKOFF_PERSON_MS
        self._log("uplink: %s: keeping readings, backing off" % coap.code_str(code))
        return self._back_off()  # 5.00 and any code the device does not know

    async def run(self, liveness, wake):
        # wake(): True when a new reading was spooled since the last call
        while True:
            delay = await self.step()
            if delay == 0:
                liveness.beat("uplink", coap.MAX_TRANSMIT_WAIT_MS * 2)
                continue
            waited = 0
            while delay is IDLE or waited < delay:
                liveness.beat("uplink", coap.MAX_TRANSMIT_WAIT_MS * 2 + 1000)
                if delay is IDLE and wake():
                    break
                step = 1000 if delay is IDLE else min(1000, delay - waited)
                await self._clock.sleep_ms(step)
                waited += step


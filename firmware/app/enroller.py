# Enrolment at boot. While device.json carries the technician's one-time code and
# the device has not been enrolled with it, the uplink sends POST /e (a request
# signed by the device key and bound to the code, wattcore.enrolment) before any
# reading; the sampler goes on and readings wait in the spool. Success is
# remembered in the data folder as the code's fingerprint: a restart does not
# enrol again, a new code does.
from wattcore import enrolment, p256

from app import record_tag

ENROLLED_FILE = "enrolled"

# what the device log says to do when the gateway refuses the code
_HINTS = {
    enrolment.CODE_WRONG: "no invite has this code: check enrol_code in device.json or ask "
                          "for a new code",
    enrolment.CODE_USED: "the code enrolled another device: ask for a new code",
    enrolment.CODE_EXPIRED: "the code expired: ask for a new code",
    enrolment.MODEL_MISMATCH: "the meter is not the model the invite names: check the meter",
}


class Enroller:
    def __init__(self, storage, code, priv, device_id, model, log=None):
        self._storage = storage
        self._key = enrolment.code_key(code)
        self._priv = priv
        self._dev = device_id
        self._pub = p256.public_key(priv)
        self._model = model
        self._confirm = enrolment.confirmation(self._key, device_id, self._pub)
        self._fingerprint = enrolment.fingerprint(self._key)
        self._log = log or (lambda msg: None)
        self.done = record_tag.unseal(storage.read(ENROLLED_FILE)) == self._fingerprint
        self.last_reason = None

    def request(self, t):
        # the signed request, with the device's (trusted) time
        return enrolment.sign_request(self._key, self._dev, self._pub, t, self._model,
                                      self._sign)

    def _sign(self, to_be_signed):
        return p256.sign(self._priv, to_be_signed)

    def handle(self, code, resp):
        # code, resp: the gateway's answer. -> wattcore.enrolment outcome
        outcome = enrolment.outcome(code, resp, self._confirm)
        reason = resp.get("reason", "")
        self.last_reason = reason or None
        if outcome == enrolment.ENROLLED or outcome == enrolment.REGISTERED:
            self._storage.write_atomic(ENROLLED_FILE, record_tag.seal(self._fingerprint))
            self.done = True
            if outcome == enrolment.ENROLLED:
                self._log("enrolment: enrolled at the gateway; sending readings")
            else:
                self._log("enrolment: the gateway knows this device already (%s); sending "
                          "readings" % reason)
        elif outcome == enrolment.REFUSED:
            self._log("enrolment: REFUSED %d.%02d %s: %s; readings are kept, retrying in 10 min"
                      % (code >> 5, code & 31, reason, _HINTS.get(reason, "see the gateway log")))
        else:
            self._log("enrolment: no confirmed answer (%d.%02d %s); retrying"
                      % (code >> 5, code & 31, reason))
        return outcome

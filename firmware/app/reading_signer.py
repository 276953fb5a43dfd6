# Builds the reading map and signs it: COSE_Sign1, ES256, kid = device id.
# wattcore.reading refuses a faulty reading that carries measurements.
from wattcore import cose, p256, reading


class ReadingSigner:
    def __init__(self, private_key, device_id, model):
        self._priv = private_key
        self.device_id = device_id
        self._model = model

    def _sign(self, to_be_signed):
        return p256.sign(self._priv, to_be_signed)

    def payload(self, seq, t, st, values):
        r = {"dev": self.device_id, "seq": seq, "t": t, "st": st, "mdl": self._model}
        for name in values:
            r[name] = values[name]
        return reading.encode_payload(r)

    def sign(self, seq, t, st, values):
        # -> tagged COSE_Sign1 bytes
        return cose.sign1(self.payload(seq, t, st, values), self.device_id, self._sign)

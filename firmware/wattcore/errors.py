# The one error tree of the cores.
#
# WattcoreError
#  +-- DecodeError          the peer sent bytes we cannot accept (remote problem)
#  |    +-- CborError
#  |    +-- CoseError
#  |    +-- CoapError
#  |    +-- ModbusError
#  |    |    +-- ModbusCrcError
#  |    |    +-- ModbusAddressError    reply from another slave / function
#  |    |    +-- ModbusExceptionReply  the meter answered with an exception code
#  |    +-- ReadingError        a reading map that breaks the schema
#  |    +-- EnrolmentError      an enrolment request or commissioning record that
#  |    |                       breaks its schema
#  |    +-- CodeError           a one-time enrolment code that is mistyped
#  +-- EncodeError          we were asked to encode something the format cannot
#                           carry (a local bug, never caused by a peer)
#
# Every decoder raises only DecodeError subclasses on malformed input.


class WattcoreError(Exception):
    pass


class DecodeError(WattcoreError):
    pass


class EncodeError(WattcoreError):
    pass


class CborError(DecodeError):
    pass


class CoseError(DecodeError):
    pass


class CoapError(DecodeError):
    pass


class ReadingError(DecodeError):
    pass


class EnrolmentError(DecodeError):
    pass


class CodeError(DecodeError):
    pass


class ModbusError(DecodeError):
    pass


class ModbusCrcError(ModbusError):
    pass


class ModbusAddressError(ModbusError):
    pass


class ModbusExceptionReply(ModbusError):
    def __init__(self, code):
        super().__init__("modbus exception code %d" % code)
        self.code = code

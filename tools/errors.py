"""The one error tree of the host tools.

::

    ToolsError                 root: every error a tool raises on purpose
     +-- ConfigError           a board or meter file, or a command-line option, breaks
                               the schema; the message names the file (or option), the
                               key path and the allowed values
     +-- MeterRequestError     the simulated meter refuses a request (the peer's
     |                         fault); carries the Modbus exception code it answers with
     +-- BoardLinkError        the serial link to a board failed: no such port, port busy,
     |                         no MicroPython REPL answering, the board went silent
     +-- BoardError            code run on the board raised; the message is its traceback
     +-- InstallError          an installer command (meter flash/deploy/provision) stops:
                               the message says what is wrong and what to do

Errors from the shared cores (``wattcore.errors``) keep their own tree: a tool lets
them through or wraps them where it adds the file or key that caused them.
"""


class ToolsError(Exception):
    """Root of the tools' errors."""


class ConfigError(ToolsError):
    """A configuration file or option is invalid.

    The message reads ``<file>: <key.path>: <problem and allowed values>``.
    """


class MeterRequestError(ToolsError):
    """A Modbus request the simulated meter refuses; ``code`` is the exception code of
    its reply (1 illegal function, 2 illegal data address, 3 illegal data value)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"modbus exception {code}: {message}")
        self.code = code


class BoardLinkError(ToolsError):
    """The serial link to a board failed; the message names the port and what to check."""


class BoardError(ToolsError):
    """Code run on the board raised; the message is the board's traceback text."""


class InstallError(ToolsError):
    """An installer command stops: the message says what is wrong and what to do."""

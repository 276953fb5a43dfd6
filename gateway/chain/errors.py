"""Errors of the chain layer, a branch of the gateway's error tree (:mod:`gateway.errors`).

::

    GatewayError
     +-- ChainError                 the chain layer failed
          +-- AnvilError            the embedded anvil node cannot be started or stopped
          |    +-- AnvilNotInstalled  the anvil binary is missing ("run make setup")
          |    +-- AnvilInUse       another process runs the node of that data folder
          +-- RpcError              a JSON-RPC request failed (node unreachable, error reply)
          |    +-- ChainIdMismatch  the node serves another chain than the configured one
          |    +-- ReceiptTimeout   a transaction was not mined within the timeout
          |    +-- TransactionFailed  a transaction was mined but reverted (status 0)
          +-- ProofError            a Merkle-Patricia proof or block header does not verify
          +-- IntervalError         an interval length or reading series is not usable
          +-- BundleError           a proof bundle cannot be made or read

Programming errors (wrong argument types, a Merkle proof asked for a leaf that does not
exist) raise the usual ``TypeError`` / ``ValueError`` / ``IndexError``.
"""

from gateway.errors import GatewayError


class ChainError(GatewayError):
    """Base of the chain layer's errors."""


class AnvilError(ChainError):
    """The embedded anvil node cannot be started, did not answer, or exited."""


class AnvilNotInstalled(AnvilError):
    """The anvil binary is missing."""


class AnvilInUse(AnvilError):
    """Another process runs the embedded node of the data folder (``anvil.lock``)."""


class RpcError(ChainError):
    """A JSON-RPC request failed; the message names the node URL."""


class ChainIdMismatch(RpcError):
    """The node at the URL serves a chain id other than the configured one."""


class ReceiptTimeout(RpcError):
    """No receipt for a transaction within the timeout (it may still be mined later)."""


class TransactionFailed(RpcError):
    """A transaction was mined with status 0 (reverted)."""


class ProofError(ChainError):
    """A block header, account proof or storage proof does not verify."""


class IntervalError(ChainError):
    """An interval length is not allowed, or a reading series is not usable."""


class BundleError(ChainError):
    """A proof bundle cannot be exported (reading not submitted yet...) or is malformed."""

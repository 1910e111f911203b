"""The control socket of a mount: its protocol and a Python client."""

from vchunkfs.control.client import Client, ControlError

__all__ = ["Client", "ControlError"]

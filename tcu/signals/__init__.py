"""DBC loading and precompiled batch codecs (pure: no I/O besides reading the DBC)."""

from tcu.signals.codec import DatabaseCodec, Decoded, MessageCodec, compile_database
from tcu.signals.dbc import load_dbc

__all__ = ["DatabaseCodec", "Decoded", "MessageCodec", "compile_database", "load_dbc"]

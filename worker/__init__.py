"""inbox-rules: sorts live-chat conversations into per-agent inbox categories."""

__version__ = "0.1.0"

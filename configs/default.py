"""The embedded default: a byte-level GPT on the Python standard library's sources (offline, ~2 min on 2 cores)."""

from gptjax.config import get_config  # noqa: F401  (the defaults live in the package)

"""mapd: Mistake-Aware Peer-Review Distillation from a committee of teacher LLMs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mapd")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

"""hipchatd: a Sensu socket handler that delivers events to HipChat rooms."""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""jobrelay: durable, effectively-once job relay between a worker and its facilitator."""

__all__ = ["__version__"]

__version__ = "0.1.0"

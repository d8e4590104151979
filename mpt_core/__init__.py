"""mpt: measure what compression does to causal language models."""

__version__ = "0.1.0"

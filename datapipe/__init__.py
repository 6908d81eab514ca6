"""datapipe: turn an organisation's documents into training data for small language models."""

__version__ = "0.1.0"

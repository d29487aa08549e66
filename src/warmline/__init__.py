"""warmline: sequentially fine-tune small language models into empathetic, safety-aware
mental-health support chatbots."""

__version__ = "0.1.0"

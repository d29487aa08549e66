"""Evaluation of trained stages: ``loss`` (token-weighted validation loss), ``evaluate``
(``warmline eval``: losses, reply metrics, safety behaviour) and ``report`` (markdown + plots)."""

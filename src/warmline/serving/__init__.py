"""Serving a trained model: ``generator`` (prompt, KV-cached token stream, text release through
the safety gate), ``chat`` (terminal) and ``web`` (Gradio app)."""

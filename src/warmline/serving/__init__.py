"""Serving a trained model, in layers: ``settings`` (sampling settings, also the CLI options),
``engine`` (prefill + token iterator: the part another engine replaces), ``release`` (the
model-free text releaser), ``generator`` (prompt building, wiring the layers through the safety
gate's one turn flow, ``warmline.safety.gate.turn``), ``chat`` (terminal) and ``web`` (Gradio app)."""

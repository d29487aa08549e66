"""warmline's safety layer: risk assessment, crisis replies and output screening.

    from warmline.safety import SafetyGate, AI_NOTICE

See ``gate.py`` for the serving flow. Parts: ``lexicon`` (tiered phrase rules), ``classifier``
(MiniLM and multilingual-e5 embeddings + MLP heads), ``risk`` (``assess``, combining them over the
whole conversation), ``replies`` (resources, crisis replies, AI notice), ``screen`` (model
output screen), ``evaluate`` and ``cli`` (``warmline safety check|eval``).
"""

from warmline.safety.gate import SafetyGate
from warmline.safety.levels import Assessment, RiskLevel
from warmline.safety.replies import AI_NOTICE, crisis_reply, load_resources, resources_note
from warmline.safety.risk import assess
from warmline.safety.screen import ScreenResult, safe_emit_length, screen_output

__all__ = [
    "AI_NOTICE",
    "Assessment",
    "RiskLevel",
    "SafetyGate",
    "ScreenResult",
    "assess",
    "crisis_reply",
    "load_resources",
    "resources_note",
    "safe_emit_length",
    "screen_output",
]

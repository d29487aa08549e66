"""Sampling settings: one dataclass whose fields (default and help text) are also the `warmline chat`
and `warmline serve` options (`cli_fields`), so a default or its explanation lives in one place."""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields


def _setting(default, help: str, *, cli: bool = True):
    """A settings field with its help text; `cli`: also a `chat`/`serve` option."""
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass
class GenerationSettings:
    """Sampling settings; the defaults are the reference recipe's, except the temperature, which a
    measured sweep picked. Each field's help text is in its metadata (`help_for`), shown by
    `warmline chat --help` and `warmline serve --help`."""

    # 0.5, not the prototype's 0.7: picked by benchmarks/decoding_sweep.py on the offline run's
    # held-out prompts (benchmarks/RESULTS.md, "Decoding sweep").
    temperature: float = _setting(0.5, "Sampling temperature (0 = greedy decoding).")
    top_k: int = _setting(50, "Sample from the k most likely tokens (0 = off).")
    top_p: float = _setting(
        0.92, "Nucleus sampling: the smallest set of tokens whose probabilities add up to top_p (1 = off)."
    )
    repetition_penalty: float = _setting(1.2, "Divides the logits of tokens already in the reply (1 = off).")
    max_new_tokens: int = _setting(200, "Longest reply, in tokens.")
    do_sample: bool = _setting(
        True, "False: greedy decoding (temperature, top-k and top-p are ignored).", cli=False
    )
    max_prompt_tokens: int = _setting(
        1536, "Token budget for the prompt; older turns beyond it are dropped.", cli=False
    )
    stop_strings: tuple[str, ...] | None = _setting(
        None,
        "Text that ends the reply where it starts (it is never shown); None: the chat template's "
        "(warmline.templates), () none.",
        cli=False,
    )

    def __post_init__(self) -> None:
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_prompt_tokens < 1:
            problems.append(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if problems:
            raise ValueError("invalid generation settings: " + "; ".join(problems))

    @property
    def sampling(self) -> bool:
        """True when tokens are sampled rather than picked greedily."""
        return self.do_sample and self.temperature > 0


def cli_fields() -> list[Field]:
    """The settings that `warmline chat` and `warmline serve` take as options, in order."""
    return [f for f in fields(GenerationSettings) if f.metadata.get("cli")]


def help_for(name: str) -> str:
    """A setting's help text."""
    return next(f.metadata["help"] for f in fields(GenerationSettings) if f.name == name)

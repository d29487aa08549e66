"""The model-free text layer of generation: what of a reply, as it grows, can be shown now.

`TextReleaser` is fed the whole reply text so far after every token (decoding all the new
tokens each time lets byte-level pieces combine into characters) and returns the part that can
be shown now. It drops control characters, cuts the reply at a stop string, holds back a tail
that could be the start of one, waits out an incomplete multi-byte character and, with a
`screen` callback, releases whole sentences only, each time after the callback accepted all the
text up to them. It knows nothing of models or tokens: any engine's text goes through it.

    releaser = TextReleaser(stop_strings=("Human:",))
    for text in texts:                  # "Hi", "Hi. Hu", "Hi. Human: x"
        shown += releaser.update(text)  # "Hi", "", "." (then releaser.done)
        if releaser.done:
            break
    shown += releaser.finish()
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

_SENTENCE_END = (".", "!", "?", "\n")
# Control characters (all but tab and newline) never reach a terminal or page: a model could
# otherwise emit escape sequences that rewrite what the user sees.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def find_stop(text: str, stop_strings: Iterable[str]) -> int:
    """Where the first stop string in `text` starts; -1 when there is none."""
    hits = [text.find(s) for s in stop_strings if s in text]
    return min(hits) if hits else -1


def held_back(text: str, stop_strings: Iterable[str]) -> int:
    """How many trailing characters could be the start of a stop string (not released yet)."""
    longest = 0
    for s in stop_strings:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class TextReleaser:
    """Decides, for one reply, how much of its text can be shown; see the module docstring.

    `screen(text) -> bool` is called with the reply up to each new sentence end and with the
    final reply; when it returns False nothing more is released and `rejected` is True (the
    caller shows its fallback). Without `screen`, text is released as it comes.
    """

    def __init__(self, stop_strings: Iterable[str] = (), *, screen: Callable[[str], bool] | None = None):
        self.stop_strings = tuple(stop_strings)
        self.screen = screen
        self.text = ""
        """The reply so far, cleaned and cut at a stop string; after `finish`, the final reply."""
        self.released = 0
        """Characters of `text` already returned."""
        self.stopped = False
        """True once a stop string was found: feed no more text."""
        self.rejected = False
        """True once `screen` rejected the reply: nothing more is released."""

    @property
    def done(self) -> bool:
        """True when more text would change nothing: stopped at a stop string, or rejected."""
        return self.stopped or self.rejected

    def update(self, text: str) -> str:
        """Take the whole reply so far (raw decoded text); return what can newly be shown."""
        if self.done:
            return ""
        text = _CONTROL_CHARS.sub("", text).lstrip()
        cut = find_stop(text, self.stop_strings)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return ""  # the rest is released by `finish`, after the final screen
        self.text = text
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return ""
        safe_upto = len(text) - held_back(text, self.stop_strings)
        if self.screen is not None:
            # Release whole sentences, each time after screening all of the text up to them.
            last_end = max(text.rfind(c, 0, safe_upto) for c in _SENTENCE_END)
            safe_upto = last_end + 1 if last_end >= 0 else 0
            if safe_upto > self.released and not self.screen(text[:safe_upto]):
                self.rejected = True
                return ""
        # Trailing whitespace waits for more text, so the pieces add up to the final reply.
        return self._release(len(text[:safe_upto].rstrip()))

    def add(self, delta: str) -> str:
        """Take the next piece of text (for engines that stream text rather than tokens)."""
        return self.update(self.text + delta)

    def finish(self) -> str:
        """The reply is complete: screen all of it and return the rest ("" when rejected)."""
        if self.rejected:
            return ""
        self.text = self.text.rstrip()
        if self.screen is not None and not self.screen(self.text):
            self.rejected = True
            return ""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        piece, self.released = self.text[self.released : upto], upto
        return piece


def release(texts: Iterable[str], releaser: TextReleaser) -> Iterator[str]:
    """Run `texts` (each the whole reply so far) through `releaser`; yield what can be shown.

    Stops reading `texts` once the releaser is done (a stop string, or a rejected sentence), so
    the engine behind them stops generating; the pieces add up to `releaser.text` unless rejected.
    """
    for text in texts:
        piece = releaser.update(text)
        if piece:
            yield piece
        if releaser.done:
            break
    close = getattr(texts, "close", None)
    if close is not None:  # end the engine's generator now, not when it is garbage-collected
        close()
    piece = releaser.finish()
    if piece:
        yield piece

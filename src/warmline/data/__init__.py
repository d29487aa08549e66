"""Data, in the order it flows: ``sources`` (read files and hub datasets into rows) ->
``formats`` (rows -> conversations) -> ``cleaning`` (drop, clean, deduplicate, split) ->
``tokens`` (chat template, assistant-only labels, trained EOS). ``inspection`` reports each step's
counts for ``warmline data inspect``."""

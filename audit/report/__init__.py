"""Report: a report dict in, what people and machines read out: the terminal (:mod:`.terminal`, :mod:`.charts`),
the JSON envelope (versions, strict JSON: :mod:`.envelope`) and its JSON Schemas (:mod:`.schema`), the offline
HTML page (:mod:`.html`), PNG figures (:mod:`.plots`) and the replication summary (:mod:`.replicate`).

Renders from the dict alone, so a saved report re-renders without a model. May import the foundation and
:mod:`audit.stats` (the claims' verdict names).
"""

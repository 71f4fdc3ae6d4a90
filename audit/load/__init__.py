"""Loading: model specs and data specs in, objects out, nothing run.

Owns classifier checkpoints and saved logits files (:mod:`.models`), causal LMs from folders, hub ids, GGUF files
and ``@layers=k`` cuts (:mod:`.causal_lm`), classification data, text corpora and their token windows
(:mod:`.data`), the Hub's reachability (:mod:`.hub`), and putting predictions on common ground with the data
(class order, ids, label ids: :mod:`.labels`). May import the foundation (errors, settings, atomic writes) only.
"""

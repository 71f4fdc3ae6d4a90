"""Reduction: logits in, a few float32 columns per scored position out (entropy, max probability, top-1, target
log-probability, KLs between teacher and students), so that an audit's memory grows with positions, never with
the vocabulary.

Owns the eager reduction and its fused Triton kernel (:mod:`.reduction`, :mod:`.kernel`) and the top-k logits
files that stand in for a teacher known only through its top k (:mod:`.topk`). May import the foundation and
:mod:`audit.losses` (the kernels' shared Triton schedule, the top-k KD loss).
"""

"""Recipes: the components wired into runs that train and replicate.

Owns the training skeleton (:mod:`.training_run`) and its classifier and causal-LM recipes (:mod:`.train`,
:mod:`.train_lm`), and the paper's grids rerun on real data (:mod:`.grid`, :mod:`.replicate`,
:mod:`.replicate_lm`). May import every lower layer; training never imports the auditor (:mod:`audit.compare`),
only replication does, to audit what it trained.
"""

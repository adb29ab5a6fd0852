"""The per-protocol earnings model: a statistical base plus an LSTM correction (see :mod:`.predictor`).

Modules by responsibility: :mod:`.config` (the one settings type), :mod:`.errors`, :mod:`.base` (the
statistical base), :mod:`.network` (Keras build + train; keras imported inside functions),
:mod:`.forecast` (training samples and the NumPy forecast loop), :mod:`.evaluation` (holdout glue),
:mod:`.persistence` (save/load through :class:`earnopt_assets.modelstore.ModelStore`) and
:mod:`.predictor` (:class:`EarningsPredictor`, which ties them together).
"""

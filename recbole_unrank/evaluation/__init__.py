"""Evaluation: what a model is judged on, from arrays or from a RecBole loader.

* :mod:`~recbole_unrank.evaluation.metrics`: rank metrics over the forget pairs
  (``forget_hit@K``, ``mean_rank``, ``RDR``, ``URR`` ...), registered in RecBole's evaluator, and
  :func:`~recbole_unrank.evaluation.metrics.evaluate_loader`;
* :mod:`~recbole_unrank.evaluation.measures`: beyond rank: the request users' utility,
  fairness (active / inactive users), agreement with retrain;
* :mod:`~recbole_unrank.evaluation.audit`: the membership-inference audit and the package's one
  AUC (:func:`~recbole_unrank.evaluation.audit.auc`, ties counting one half).

``recbole_unrank.metrics`` and ``recbole_unrank.measures`` are the older names of the first two
(and the audit), kept as re-exports. This package imports nothing on its own: ``metrics``
imports RecBole and registers its metrics when it is imported.
"""

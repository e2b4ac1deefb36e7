"""Helpers that record what other ML tools do as mlaudit events.

* :mod:`mlaudit.integrations.kfp` — a Kubeflow Pipelines v2 component records the datasets
  it read and wrote and the model it produced, tied to the pipeline run
  (:func:`~mlaudit.integrations.kfp.record_component`).

Like the rest of the SDK they need only the standard library; the tool itself is never
imported at run time (its objects are read by their attributes).
"""

__all__ = ["kfp"]

"""Zero-shot classification with test-time adaptation (policies, views, datasets, runner task).

Its methods are those of the registry (:mod:`rlcf.methods`, :mod:`tasks.methods`)."""

"""Zero-shot classification with test-time adaptation (policies, views, datasets, peers, runner task).

The peer methods of :mod:`.peers` are registered by :func:`tasks.methods.register_all`, not by importing this package."""

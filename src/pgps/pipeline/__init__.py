"""DVC stage verbs: ``convert``, ``plan``, ``train``, ``evaluate``, ``reproduce`` (one module each)."""

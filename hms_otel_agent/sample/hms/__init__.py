"""The ``hms`` Django app: models, JSON views, admin and the ``seed_hms`` command."""

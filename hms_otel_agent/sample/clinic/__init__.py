"""The ``clinic`` Django app: the second bundled example, written the way real projects are.

Where ``hms`` has one JSON view per relation kind, ``clinic`` has the shapes that real code is
made of: a Django REST framework viewset with nested serializers and a ``SerializerMethodField``,
an admin changelist with a foreign-key column and a callable, a ModelForm whose option labels
follow a relation, a template that includes a fragment twice, a GenericForeignKey reached through
a reverse relation, django-taggit tags, a property that reads two relations, natural-key lookups
in a loop, an async view, a paginated list, the same lookup repeated, a filtered related manager
and ``count()`` / ``aggregate()`` on a related manager per row. Every naive page has an
optimized twin that renders the same content with fewer queries (``views.py``, ``urls.py``).
"""

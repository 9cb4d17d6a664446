"""The sample hospital with the four pages of the peer benchmark, and each peer agent's settings.

``settings.py`` extends the sample's settings; ``HMS_PEERS_AGENT`` (``sentry`` or ``elastic``,
with ``HMS_PEERS_SAMPLE_RATE`` and ``HMS_PEERS_SINK``) turns on an agent that is configured in
Django settings rather than by a launcher. The sample app itself is not changed.
"""

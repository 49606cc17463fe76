"""The wire format, both sides: what perfd and perfctl must agree on, in one place.

``protocol`` the envelope and error codes; ``arrays`` raw array frames (numpy imported lazily);
``values`` shared values (FOREVER, model states, eviction reasons, the frame limit); ``keys``
CURVE key files; ``units`` sizes and durations as people write them; ``paths`` where the
sockets are; ``sockprobe`` who answers on one. It imports only the standard library, pyzmq
and itself: no part of the daemon (tests/test_architecture.py checks it).
"""

"""The model cache, one concern a module (arrows point to what a module imports):

- ``core``: ModelCache and Lease, the lock and the order of things -> lifecycle, policy, report
- ``lifecycle``: a load on its thread with its timeout, an unload and its record -> loading,
  runtime
- ``policy``: budgets, LRU choice, what to evict for a shortfall or pressure (pure values)
- ``loading``: one load measured through the meter, and which figure an entry keeps -> tensors
- ``tensors``: the bytes a loaded model's own tensors hold, per device (torch, numpy found in
  sys.modules: never imported here)
- ``runtime``: perfd's own memory per device apart from its models (runtime overhead), and
  the devices where pressure evictions are held
- ``meter``: this process's memory (the Meter the cache is given; ProcessMeter is the real one)
- ``report``: the ``ps`` entries, the eviction records and the ``stats`` section
- ``entry``: an entry and its counters (plain data)
- ``errors``: what the cache refuses, with its facts (the handlers map them to wire codes)
- ``housekeeping``: the thread that expires keep-alives and acts on memory pressure
"""

"""perfd: the performance daemon for AI inference hosts.

Importing this package must stay cheap: perfctl imports ``perfd.protocol`` through it.
"""

__version__ = "0.1.0"

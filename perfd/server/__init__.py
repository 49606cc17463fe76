"""The ZeroMQ server: sockets, who may run what, connection and in-flight limits, workers."""

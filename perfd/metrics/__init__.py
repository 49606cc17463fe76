"""The Prometheus exporter and the small HTTP server that serves it."""

"""Alert sinks: each alert transition also goes to a webhook and/or a Prometheus Alertmanager.

    monitor --Sinks.deliver()--> [bounded queue] --sender thread--> POST (pooled, retrying)

deliver() never blocks: a full queue drops its oldest entry (counted), and a POST that still
fails after its retries drops its entry (counted as failed), so a dead sink holds bounded
memory. An outage is logged once (``alert_sink.failed``), its end too (``alert_sink.recovered``).
``WebhookSink`` POSTs each transition as JSON. ``AlertmanagerSink`` POSTs to /api/v2/alerts
and re-sends the firing alerts every ``resend`` (endsAt a few resends ahead, so they resolve if
perfd goes away); a resolved alert is sent once, endsAt = when it resolved. requests is imported
on the sender thread, never by importing this module. Redirects are never followed (a 3xx is
a failure naming its target); the url's secret parts (user:password@, token query values and
path segments: perfd.redaction) and the bearer token never appear in logs or stats.
"""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Final

from perfd import __version__, log
from perfd.config import AlertsConfig, SinkConfig
from perfd.net import http
from perfd.redaction import Scrubber, redact_url, url_secrets
from perfd.wire.values import rfc3339

if TYPE_CHECKING:
    import requests

_log = log.get("perfd.sinks")

_TIMER: Final[dict[str, Any]] = {}  # what the sender takes when a timer (resend) is due
_ENDS_AFTER_RESENDS: Final = 4  # a firing alert's endsAt, in resend intervals (as Prometheus)
_BODY_SNIPPET: Final = 200
_ERRNO: Final = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


class Sink:
    """One HTTP destination: a bounded queue and one sender thread, started on first use.

    ``sent`` and ``failed`` count POSTs; ``dropped`` counts entries pushed out of a full queue,
    ``dropped_at_stop`` those still queued when stop() gave up.
    """

    name = "sink"

    def __init__(self, cfg: SinkConfig, *, hostname: str | None = None) -> None:
        self.cfg = cfg
        self.url = redact_url(cfg.url)  # as logged and shown: perfd.redaction
        self.hostname = hostname or socket.gethostname()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._session: requests.Session | None = None
        self._http = http.HttpStats()
        self._failing = self._overflowing = self._token_warned = False
        self.sent = self.failed = self.dropped = self.dropped_at_stop = 0
        self.last_error: str | None = None

    # -- the monitor's side -----------------------------------------------------------------

    def deliver(self, entry: dict[str, Any]) -> None:
        """Queue one transition; never blocks (a full queue drops its oldest entry)."""
        overflow = False
        with self._cond:
            if self._stop.is_set():
                self.dropped_at_stop += 1
                return
            if len(self._queue) >= self.cfg.queue:
                self._queue.popleft()
                self.dropped += 1
                overflow, self._overflowing = not self._overflowing, True
            self._queue.append(entry)
            self._start_locked()
            self._cond.notify()
        if overflow:
            _log.warning("alert_sink.queue_full", sink=self.name, queue=self.cfg.queue)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued until ``timeout`` or the first failure; count the rest."""
        with self._cond:
            self._deadline = time.monotonic() + timeout
            self._stop.set()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            unsent = len(self._queue)
            self._queue.clear()
            self.dropped_at_stop += unsent
        if thread is not None and thread.is_alive():
            _log.warning("thread.still_alive", thread=thread.name, action="exiting anyway")
        if unsent:
            _log.warning("alert_sink.dropped_at_stop", sink=self.name, url=self.url, count=unsent)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            queued = len(self._queue)
        return {
            "url": self.url,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "dropped_at_stop": self.dropped_at_stop,
            "queued": queued,
            "failing": self._failing,
            "last_error": self.last_error,
            "http": self._http.as_dict(),
        }

    # -- the sender thread ------------------------------------------------------------------

    def _start_locked(self) -> None:
        if self._thread is None:
            name = f"perfd-sink-{self.name}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        n = self.cfg.retries  # a POST is retried on connect errors, 429 and 503 only
        retry = http.post_safe_retry(
            total=n,
            connect=n,
            read=0,
            status=n,
            backoff_factor=0.5,
            backoff_jitter=0.25,
            backoff_max=30,
        )
        headers = {"Content-Type": "application/json", "User-Agent": f"perfd/{__version__}"}
        cfg = self.cfg  # make_session imports requests: here, on the sender thread
        self._session = http.make_session(
            pool_maxsize=1, retry=retry, ca_bundle=cfg.ca_bundle, headers=headers, stats=self._http
        )
        try:
            while (entry := self._take()) is not None:
                try:
                    self._on_timer() if entry is _TIMER else self._handle(entry)
                except Exception:  # a bug must not kill the sender
                    _log.exception("alert_sink.bug", sink=self.name)
        finally:
            self._session.close()

    def _take(self) -> dict[str, Any] | None:
        """The next entry, _TIMER when a timer is due, or None when it is time to exit."""
        with self._cond:
            while True:
                if self._stop.is_set():
                    if not self._queue or self._failing or time.monotonic() >= self._deadline:
                        return None
                    return self._queue.popleft()
                due = self._due_in()
                if due is not None and due <= 0:
                    return _TIMER
                if self._queue:
                    return self._queue.popleft()
                self._overflowing = False
                self._cond.wait(due)

    def _due_in(self) -> float | None:
        """Seconds until _on_timer is due; None: no timer."""
        return None

    def _on_timer(self) -> None:
        """Called on the sender thread when _due_in() has run out."""

    def _handle(self, entry: dict[str, Any]) -> None:
        raise NotImplementedError

    def _recovered(self) -> None:
        """Called on the sender thread when a POST works again after an outage."""

    def _post(self, url: str, body: Any) -> bool:
        """POST ``body`` as JSON; count, log an outage's start and end; True when it worked."""
        assert self._session is not None
        token = self._token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body, default=str).encode()
        timeout = self.cfg.timeout
        status: int | None = None
        error: str | None = None
        kind: str | None = None
        started = time.perf_counter()
        with http.counting_retries() as tally:
            try:
                with self._session.post(
                    url,
                    data=data,
                    headers=headers,
                    timeout=(timeout, timeout),
                    allow_redirects=False,  # never re-send an alert to another server
                ) as resp:
                    if 300 <= resp.status_code < 400:
                        status, kind = resp.status_code, "redirect"
                        error = http.redirect_message(resp, "url")
                    elif not 200 <= resp.status_code < 300:
                        status, kind = resp.status_code, "status"
                        snippet = " ".join(resp.text[:_BODY_SNIPPET].split())
                        error = f"HTTP {status}" + (f": {snippet}" if snippet else "")
            except OSError as exc:  # requests' errors, and a missing ca_bundle file
                kind, error = _classify(exc)
        self._http.record(time.perf_counter() - started, tally.retries, kind)
        if error is None:
            self.sent += 1
            if self._failing:
                self._failing = False
                _log.info("alert_sink.recovered", sink=self.name, url=self.url, failed=self.failed)
                self._recovered()
            return True
        error = Scrubber([token, *url_secrets(self.cfg.url)]).text(error)
        self.failed += 1
        self.last_error = error
        if not self._failing:
            self._failing = True
            fields = {"sink": self.name, "url": self.url, "status": status, "error": error}
            _log.warning("alert_sink.failed", **fields, action="dropping until it answers")
        return False

    def _token(self) -> str:
        """The bearer token, read from the environment at each send; never logged."""
        if not self.cfg.token_env:
            return ""
        token = os.environ.get(self.cfg.token_env, "")
        if not token and not self._token_warned:
            self._token_warned = True
            _log.warning("alert_sink.no_token", sink=self.name, env=self.cfg.token_env)
        return token

    def take_over(self, old: Sink) -> None:
        """Carry state over from the sink this one replaces on reload (after old.stop())."""


class WebhookSink(Sink):
    """POSTs each transition to the url as a JSON object, with ``host`` and ``source``."""

    name = "webhook"

    def _handle(self, entry: dict[str, Any]) -> None:
        self._post(self.cfg.url, {**entry, "host": self.hostname, "source": "perfd"})


def alertmanager_alert(entry: dict[str, Any], instance: str, ends_at: str) -> dict[str, Any]:
    """One element of Alertmanager's ``POST /api/v2/alerts`` body, from a transition entry."""
    labels = {
        "alertname": entry["rule"],
        "alert_id": entry["id"],
        "resource": entry["resource"],
        "severity": entry["severity"],
        "instance": instance,
        "job": "perfd",
    }
    if entry.get("uuid"):
        labels["uuid"] = entry["uuid"]
    value, threshold, unit = entry.get("value"), entry.get("threshold"), entry.get("unit") or ""
    summary = f"{entry['rule']} {entry['severity']} on {entry['resource']}: "
    summary += f"value {value}{unit} (threshold {threshold}{unit})"
    return {
        "labels": {key: str(val) for key, val in labels.items()},
        "annotations": {"summary": summary, "value": str(value), "threshold": str(threshold)},
        "startsAt": entry["since"],
        "endsAt": ends_at,
    }


class AlertmanagerSink(Sink):
    """POSTs alerts to ``{url}/api/v2/alerts`` and re-sends the firing ones every ``resend``."""

    name = "alertmanager"

    def __init__(self, cfg: SinkConfig, *, hostname: str | None = None) -> None:
        super().__init__(cfg, hostname=hostname)
        self.endpoint = cfg.url.rstrip("/") + "/api/v2/alerts"
        self._firing: dict[str, dict[str, Any]] = {}  # id -> latest entry; sender thread only
        self._seen: set[str] = set()  # ids this sink has handled (take_over must not revive)
        self._adopt: list[dict[str, Any]] = []  # firing entries handed over on reload
        self._next_resend = 0.0

    def _ends_at(self) -> str:
        return rfc3339(time.time() + _ENDS_AFTER_RESENDS * self.cfg.resend)

    def _handle(self, entry: dict[str, Any]) -> None:
        alert_id = entry["id"]
        self._seen.add(alert_id)
        if entry["event"] == "alert.resolved":
            self._firing.pop(alert_id, None)
            self._post(self.endpoint, [alertmanager_alert(entry, self.hostname, entry["at"])])
            return
        if not self._firing:
            self._next_resend = time.monotonic() + self.cfg.resend
        self._firing[alert_id] = entry
        alerts = [alertmanager_alert(entry, self.hostname, self._ends_at())]
        previous = entry.get("previous_severity")
        if previous and previous != entry["severity"]:
            # severity is a label: the alert at the old severity is a different alert, now over
            ended = {**entry, "severity": previous}
            alerts.append(alertmanager_alert(ended, self.hostname, entry["at"]))
        self._post(self.endpoint, alerts)

    def _due_in(self) -> float | None:  # called with self._cond held
        for entry in self._adopt:
            if entry["id"] not in self._seen:
                self._firing[entry["id"]] = entry
            self._next_resend = 0.0
        self._adopt.clear()
        return self._next_resend - time.monotonic() if self._firing else None

    def _on_timer(self) -> None:
        self._next_resend = time.monotonic() + self.cfg.resend
        ends_at = self._ends_at()
        alerts = [alertmanager_alert(e, self.hostname, ends_at) for e in self._firing.values()]
        self._post(self.endpoint, alerts)

    def _recovered(self) -> None:
        self._next_resend = 0.0  # it may have missed alerts while down: send them all now

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "firing": len(self._firing)}

    def take_over(self, old: Sink) -> None:
        if isinstance(old, AlertmanagerSink) and old._firing:
            with self._cond:
                self._adopt.extend(dict(old._firing).values())
                self._start_locked()
                self._cond.notify()


_KINDS: Final[dict[str, type[Sink]]] = {"webhook": WebhookSink, "alertmanager": AlertmanagerSink}


class Sinks:
    """The configured sinks (those with a url): fan-out, reload, stop, stats."""

    def __init__(self, cfg: AlertsConfig, *, hostname: str | None = None) -> None:
        self._hostname = hostname
        self._lock = threading.Lock()
        self._sinks: dict[str, Sink] = {}
        self.reconfigure(cfg)

    def deliver(self, entry: dict[str, Any]) -> None:
        """Hand one transition to every sink; never blocks."""
        with self._lock:
            sinks = list(self._sinks.values())
        for sink in sinks:
            sink.deliver(entry)

    def reconfigure(self, cfg: AlertsConfig, timeout: float = 2.0) -> None:
        """Rebuild the sinks whose config changed; the old ones get ``timeout`` to drain."""
        with self._lock:
            old = self._sinks
            new: dict[str, Sink] = {}
            for name, kind in _KINDS.items():
                sink_cfg: SinkConfig = getattr(cfg, name)
                current = old.get(name)
                if current is not None and current.cfg == sink_cfg:
                    new[name] = current
                elif sink_cfg.url:
                    new[name] = kind(sink_cfg, hostname=self._hostname)
            self._sinks = new
        for name, sink in old.items():
            if new.get(name) is not sink:
                sink.stop(timeout)
                if name in new:
                    new[name].take_over(sink)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every sink; together they get ``timeout`` to send what is queued."""
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        deadline = time.monotonic() + timeout
        for sink in sinks:
            sink.stop(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            sinks = dict(self._sinks)
        return {name: sink.stats() for name, sink in sinks.items()}


def _classify(exc: BaseException) -> tuple[str, str]:
    """(failure kind, a reason that names no url) for a requests exception."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect", "connect timeout"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "timeout", "read timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "tls", "TLS error (check ca_bundle)"
    if not isinstance(exc, requests.RequestException):
        return "error", str(exc)
    errno = _ERRNO.search(str(exc))  # "[Errno 111] Connection refused" under urllib3's wrappers
    reason = errno.group(1).lower() if errno else type(exc).__name__
    return ("connect" if isinstance(exc, requests.exceptions.ConnectionError) else "error"), reason

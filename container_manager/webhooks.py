"""Webhooks: signed POSTs about jobs that ended, delivered at least once from an outbox.

A job that ends with a webhook URL (its own, else its template's) gets a ``WebhookDelivery``
row in the transaction that ends it (``ContainerJob.transition``). Each worker runs a
``Pump`` that delivers due rows:

1. one short transaction *leases* them: selected with ``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL (SQLite's ``BEGIN IMMEDIATE`` serialises it), each gets its try counted and
   ``next_attempt_at`` pushed past the longest a try can take (``lease_seconds``); commit;
2. the POST, outside any transaction (``deliver``);
3. the answer is recorded: delivered on a 2xx, else another try after a backoff, or given up
   after ``WEBHOOK_MAX_ATTEMPTS`` tries.

A worker killed between 1 and 3 leaves its rows leased; when the lease runs out any worker
delivers them again. So a receiver may see a delivery more than once (at least once, never
lost): it dedupes by the delivery id (``X-Container-Jobs-Delivery``, ``delivery_id``).

Each delivery is signed: ``X-Container-Jobs-Signature: t=<unix seconds>,v1=<hex>``, the
HMAC-SHA256 with ``WEBHOOK_SECRET`` of ``"<t>.<body>"`` (see the README for a verifier).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from urllib.parse import urljoin, urlsplit

from django.db import DatabaseError, connection, connections, transaction
from django.db.models import F
from django.utils import timezone

from . import logs, webhook_body
from .conf import setting
from .db import drop_if_broken, reset_connection, retry_transient
from .models import WebhookDelivery
from .runner_threads import RunnerThreads
from .units import backoff

logger = logs.get_logger(__name__)

SIGNATURE_HEADER = "X-Container-Jobs-Signature"
DELIVERY_HEADER = "X-Container-Jobs-Delivery"
USER_AGENT = "django-container-jobs-webhooks/1"

# A lease outlasts a try by this much: a try ends within WEBHOOK_TIMEOUT_SECONDS, plus the
# moments it takes to record its answer.
LEASE_MARGIN_SECONDS = 5.0
# Redirects followed per try, each only to the same scheme, host and port.
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Of a receiver's answer, this much is read (the rest is not waited for), and this much kept.
ANSWER_READ_BYTES = 64 * 1024
ANSWER_KEPT_CHARS = 200
# Tries a delivery's history keeps: the latest.
HISTORY_KEPT = 20
# Without news of a delivery written in this process, the pump looks for due ones this often:
# one query on the due-deliveries index.
POLL_SECONDS = 1.0


# -- one try -----------------------------------------------------------------------------


@dataclass
class Answer:
    """How a try went: the receiver's HTTP status (and the start of what it said), or why
    there was none."""

    status_code: int | None = None
    error: str = ""
    text: str = ""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300 and not self.error


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def deliver(delivery: WebhookDelivery) -> Answer:
    """POST ``delivery`` once, signed now; never raises for what the network does."""
    secret = setting("WEBHOOK_SECRET")
    if not secret:
        return Answer(error="not sent: the WEBHOOK_SECRET setting is not set")
    body = webhook_body.sent(delivery.pk, delivery.body)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        DELIVERY_HEADER: str(delivery.pk),
        SIGNATURE_HEADER: sign(body, secret, int(time.time())),
    }
    timeout = setting("WEBHOOK_TIMEOUT_SECONDS")
    try:
        return post(delivery.url, body, headers, timeout)
    except TimeoutError:
        return Answer(error=f"no answer within {timeout:g} s (WEBHOOK_TIMEOUT_SECONDS)")
    except (OSError, http.client.HTTPException) as error:
        return Answer(error=f"{type(error).__name__}: {error}".strip().rstrip(":"))


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST ``body`` to ``url``, following a few redirects to the same origin, all within
    ``timeout`` seconds (raises TimeoutError past them, OSError on network trouble)."""
    deadline = time.monotonic() + timeout
    origin = _origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        status, location, text = _post_once(url, body, headers, deadline)
        if status not in REDIRECTS or not location:
            return Answer(status, text=text)
        target = urljoin(url, location)
        if _origin(target) != origin:
            # Named by its origin only: a URL may carry a token in its path or query.
            where = "{}://{}:{}".format(*_origin(target))
            return Answer(status, error=f"redirect to another host ({where}) not followed")
        url = target
    return Answer(status, error=f"more than {MAX_REDIRECTS} redirects: not followed")


def _post_once(url: str, body: bytes, headers: dict[str, str], deadline: float):
    """(status, Location header, start of the answer) of one POST."""
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=_left(deadline))
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        _set_timeout(conn, deadline)
        response = conn.getresponse()
        answer = b""
        while len(answer) < ANSWER_READ_BYTES:
            _set_timeout(conn, deadline)
            chunk = response.read1(ANSWER_READ_BYTES - len(answer))
            if not chunk:
                break
            answer += chunk
        text = answer.decode("utf-8", "replace")[:ANSWER_KEPT_CHARS]
        return response.status, response.getheader("Location"), text
    finally:
        conn.close()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError()
    return left


def _set_timeout(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Each step of a try gets what is left of its time, not a timeout of its own."""
    if conn.sock is not None:
        conn.sock.settimeout(_left(deadline))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


# -- the outbox --------------------------------------------------------------------------


def due_deliveries():
    """Pending deliveries whose next try has come, read from the due-deliveries index."""
    pending = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING)
    return pending.filter(next_attempt_at__lte=timezone.now())


def lease_seconds() -> float:
    return setting("WEBHOOK_TIMEOUT_SECONDS") + LEASE_MARGIN_SECONDS


def lease_due(limit: int) -> list[WebhookDelivery]:
    """Take up to ``limit`` due deliveries for this process, each with its try counted; no
    other worker takes them until the lease runs out (see the module's docstring)."""
    if limit <= 0:
        return []
    with transaction.atomic():
        due = due_deliveries().order_by("next_attempt_at")
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        leased = list(due[:limit])
        if leased:
            until = timezone.now() + timedelta(seconds=lease_seconds())
            WebhookDelivery.objects.filter(pk__in=[d.pk for d in leased]).update(
                attempts=F("attempts") + 1, next_attempt_at=until
            )
            for delivery in leased:
                delivery.attempts += 1
                delivery.next_attempt_at = until
    return leased


def send(delivery: WebhookDelivery) -> Answer:
    """One try of a leased delivery, and its answer recorded."""
    started, clock = timezone.now(), time.monotonic()
    answer = deliver(delivery)
    tried = {"at": started.isoformat(), "duration_ms": round((time.monotonic() - clock) * 1000)}
    retry_transient(
        lambda: record(delivery, answer, tried),
        f"webhook delivery {delivery.pk}: recording its answer",
    )
    return answer


def record(delivery: WebhookDelivery, answer: Answer, tried: dict) -> bool:
    """Write how a try went; False when the lease ran out and another worker has the
    delivery now (a success is written anyway: it is delivered, whoever says so)."""
    entry = {**tried, "attempt": delivery.attempts}
    if answer.status_code is not None:
        entry["status_code"] = answer.status_code
    if answer.error:
        entry["error"] = answer.error
    if answer.text:
        entry["answer"] = answer.text
    changes: dict = {"history": [*delivery.history, entry][-HISTORY_KEPT:]}
    Status = WebhookDelivery.Status
    mine = WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.PENDING)
    if answer.delivered:
        changes.update(status=Status.DELIVERED, delivered_at=timezone.now())
        outcome = "delivered"
    else:
        mine = mine.filter(attempts=delivery.attempts)
        if delivery.attempts >= setting("WEBHOOK_MAX_ATTEMPTS"):
            changes["status"] = Status.FAILED
            outcome = f"given up after {delivery.attempts} tries"
        else:
            wait = retry_delay(delivery.attempts)
            changes["next_attempt_at"] = timezone.now() + timedelta(seconds=wait)
            outcome = f"tried again in {wait:.1f} s"
    written = bool(mine.update(**changes))
    # The host only: a URL may carry a token in its path or query.
    logger.info(
        "webhook delivery %s (job %s) to %s, try %d: %s; %s",
        delivery.pk,
        delivery.job_id,
        urlsplit(delivery.url).hostname,
        delivery.attempts,
        answer.error or f"HTTP {answer.status_code}",
        outcome if written else "meanwhile taken by another worker",
    )
    if written:
        for name, value in changes.items():
            setattr(delivery, name, value)
    return written


def retry_delay(tries: int) -> float:
    base, most = setting("WEBHOOK_BACKOFF_BASE"), setting("WEBHOOK_BACKOFF_MAX")
    return backoff(tries, base, most, jitter=0.5)


def deliver_again(deliveries) -> int:
    """Make ``deliveries`` due now, for a new round of tries (the admin's action)."""
    return deliveries.update(
        status=WebhookDelivery.Status.PENDING, attempts=0, next_attempt_at=timezone.now()
    )


# -- in a worker -------------------------------------------------------------------------


class Pump:
    """A worker's deliveries: a thread that leases due ones and sends each in a thread of
    its own, at most ``WEBHOOK_CONCURRENCY`` at once. A slow or silent receiver holds one
    of them for at most ``WEBHOOK_TIMEOUT_SECONDS``; the others, and the job loop, go on."""

    def __init__(self):
        self.concurrency = setting("WEBHOOK_CONCURRENCY")
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.senders = RunnerThreads(on_done=webhook_body.written.set)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="cm-webhooks", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop leasing, and give the tries under way their time to end (a try cut short is
        leased, and made again by another worker when its lease runs out)."""
        self.stopping.set()
        webhook_body.written.set()
        wait = lease_seconds()
        if self.thread is not None:
            self.thread.join(wait)
        self.senders.shutdown(wait)

    def busy(self) -> bool:
        """Whether tries are under way, or due (what an ``--until-idle`` worker waits for)."""
        return self.in_flight > 0 or due_deliveries().exists()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    drop_if_broken()
                    self.pump()
                except DatabaseError as error:
                    logger.warning("webhook deliveries: database error (%s); retrying", error)
                    reset_connection()
                webhook_body.written.wait(POLL_SECONDS)
                webhook_body.written.clear()
        finally:
            connections.close_all()

    def pump(self) -> int:
        """Lease what is due for the free slots and start sending it; returns how many."""
        free = self.concurrency - self.in_flight
        # An idle worker's look: one query on the index, without a transaction or a lock.
        if free <= 0 or not due_deliveries().exists():
            return 0
        leased = lease_due(free)
        for delivery in leased:
            with self.lock:
                self.in_flight += 1
            self.senders.submit(partial(self._send, delivery), f"cm-webhook-{delivery.pk}")
        return len(leased)

    def _send(self, delivery: WebhookDelivery) -> None:
        try:
            send(delivery)
        finally:
            with self.lock:
                self.in_flight -= 1

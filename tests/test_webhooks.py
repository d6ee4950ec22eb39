"""Webhooks: the outbox written with each ending, signed deliveries to a local receiver that
fails the first tries, redirects, and at-least-once through a killed worker."""

import http.server
import json
import re
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from container_manager import webhooks
from container_manager.api import cancel_job, create_job
from container_manager.models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    WebhookDelivery,
)
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "test-webhook-secret"
SETTINGS = {
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_TIMEOUT_SECONDS": 1.0,
    "WEBHOOK_BACKOFF_BASE": 0.05,
    "WEBHOOK_BACKOFF_MAX": 0.2,
}


def readme_verifier():
    """``verify_signature`` exactly as the README shows it to receivers."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (code,) = re.findall(
        r"```python\n(import hashlib\n.*?def verify_signature.*?)```", readme, re.S
    )
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the README's own snippet, run as a receiver would
    return namespace["verify_signature"]


verify_signature = readme_verifier()


class Receiver:
    """An HTTP receiver on 127.0.0.1 answering each POST by the next of ``script``, then 200:
    a status code, ``"hang"`` (no answer past the timeout), ``"reset"`` (the connection
    dropped), ``"hold"`` (no answer until ``release``), or ``("redirect", url)``."""

    def __init__(self, script=(), tail_status=200):
        self.script = list(script)
        self.tail_status = tail_status
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.held = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                            "verified": verify_signature(
                                body, self.headers.get("X-Container-Jobs-Signature", ""), SECRET
                            ),
                        }
                    )
                    step = receiver.script.pop(0) if receiver.script else receiver.tail_status
                receiver.act(self, step)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def act(self, handler, step):
        if step == "hang":
            time.sleep(3)
            return
        if step == "hold":
            self.held.set()
            self.release.wait(60)
            step = 200
        if step == "reset":
            # SO_LINGER 0: the close sends a reset, not a tidy end of stream.
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.connection.close()
            return
        if isinstance(step, tuple):
            handler.send_response(302)
            handler.send_header("Location", step[1])
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        answer = b'{"ok": true}' if step < 300 else b"receiver says no"
        handler.send_response(step)
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def bodies(self):
        return [json.loads(request["body"]) for request in self.requests]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_settings(settings):
    settings.CONTAINER_MANAGER = dict(SETTINGS)
    return settings


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def make_host(name="mock", **config):
    return ExecutorHost.objects.create(name=name, executor_type="mock", executor_config=config)


def run_worker():
    Worker(until_idle=True, poll_interval=0.05).run()


def deliver_all(rounds=20):
    """Lease and send what is due, until nothing is (the pump's work, in this thread)."""
    for _ in range(rounds):
        for delivery in webhooks.lease_due(10):
            webhooks.send(delivery)
        if not webhooks.due_deliveries().exists():
            pending = WebhookDelivery.objects.filter(status="pending")
            if not pending.exists():
                return
            time.sleep(0.1)


# -- the outbox ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "fields", "status", "exit_code"),
    [
        ({}, {}, "completed", 0),
        ({"exit_code": 3, "stderr": "boom\n"}, {}, "failed", 3),
        ({"duration_seconds": 5}, {"timeout_seconds": 1}, "timed_out", 143),
    ],
)
def test_a_job_run_by_a_worker_is_delivered_signed(
    webhook_settings, receiver, config, fields, status, exit_code
):
    host = make_host(**config)
    job = create_job("img", ["echo", "hi"], host=host, webhook_url=receiver.url + "/hook", **fields)
    run_worker()

    job.refresh_from_db()
    assert job.status == status
    delivery = job.webhook_deliveries.get()
    assert (delivery.status, delivery.attempts, delivery.job_status) == ("delivered", 1, status)
    (request,) = receiver.requests
    assert request["verified"] and request["path"] == "/hook"
    assert request["headers"]["X-Container-Jobs-Delivery"] == str(delivery.pk)
    assert request["headers"]["Content-Type"] == "application/json"
    body = json.loads(request["body"])
    assert body["delivery_id"] == delivery.pk and body["event"] == "job.finished"
    assert (body["job_id"], body["status"], body["exit_code"]) == (str(job.pk), status, exit_code)
    assert body["execution_id"] == job.execution_id and body["host"] == "mock"
    assert body["error"] == job.last_error and body["attempts"] == 1
    assert body["finished_at"] == job.finished_at.isoformat()
    assert body["stdout_tail"] == job.stdout and body["stderr_tail"] == job.stderr


def test_a_cancelled_job_and_a_dependent_failed_unrun_are_delivered(webhook_settings, receiver):
    host = make_host(exit_code=1)
    cancelled = create_job("img", host=host, hold=True, webhook_url=receiver.url)
    cancel_job(cancelled)
    first = create_job("img", host=host)
    dependent = create_job("img", host=host, depends_on=[first], webhook_url=receiver.url)
    run_worker()

    bodies = {body["job_id"]: body for body in receiver.bodies()}
    assert {job_id: body["status"] for job_id, body in bodies.items()} == {
        str(cancelled.pk): "cancelled",
        str(dependent.pk): "failed",
    }
    assert "which it depends on, ended failed" in bodies[str(dependent.pk)]["error"]
    assert all(request["verified"] for request in receiver.requests)


def test_a_job_without_a_webhook_gets_no_delivery_and_costs_no_more(webhook_settings, mock_host):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    job = create_job("img", host=mock_host)
    with CaptureQueriesContext(connection) as moves:
        cancel_job(job)
    assert len(moves) == 1  # the conditional UPDATE alone
    assert not WebhookDelivery.objects.exists()


def test_the_templates_url_is_used_unless_the_job_names_its_own(webhook_settings, receiver):
    template = EnvironmentVariableTemplate.objects.create(
        name="t", webhook_url=receiver.url + "/template"
    )
    host = make_host()
    create_job("img", host=host, env_template=template)
    create_job("img", host=host, env_template=template, webhook_url=receiver.url + "/own")
    run_worker()
    assert sorted(request["path"] for request in receiver.requests) == ["/own", "/template"]


def test_a_retried_attempt_is_not_an_ending_but_the_last_one_is(webhook_settings, receiver):
    webhook_settings.CONTAINER_MANAGER["RETRY_BACKOFF_BASE"] = 0.01
    host = make_host(exit_code=2)
    job = create_job("img", host=host, max_attempts=2, webhook_url=receiver.url)
    run_worker()
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("failed", 2)
    assert [body["attempts"] for body in receiver.bodies()] == [2]


def test_the_delivery_is_written_in_the_transaction_of_the_ending(webhook_settings, receiver):
    job = create_job("img", host=make_host(), hold=True, webhook_url=receiver.url)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert job.transition("cancelled")
        assert WebhookDelivery.objects.filter(job=job).exists()
        raise RuntimeError("the ending is rolled back")
    assert ContainerJob.objects.get(pk=job.pk).status == "pending"
    assert not WebhookDelivery.objects.exists()
    # Outside a transaction, the move makes its own: both are written, or neither.
    job.refresh_from_db()
    assert job.transition("cancelled")
    assert WebhookDelivery.objects.get(job=job).job_status == "cancelled"


def test_an_ending_saved_with_save_writes_its_delivery_too(webhook_settings, receiver):
    job = create_job("img", host=make_host(), hold=True, webhook_url=receiver.url)
    job.status = "cancelled"
    job.save()
    assert WebhookDelivery.objects.get(job=job).job_status == "cancelled"


def test_output_tails_are_cut_on_a_character_boundary(webhook_settings, receiver):
    from container_manager.webhook_body import TAIL_BYTES, tail

    text = "é" * TAIL_BYTES  # two bytes each: a cut at an odd offset splits one
    assert tail(text) == "é" * (TAIL_BYTES // 2)
    assert tail("x" + text[: TAIL_BYTES // 2 - 1] + "ab") == text[: TAIL_BYTES // 2 - 1] + "ab"
    assert tail("short") == "short"


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://h/"])
def test_a_url_that_is_not_http_is_refused_at_creation(webhook_settings, mock_host, url):
    with pytest.raises(ValidationError) as error:
        create_job("img", host=mock_host, webhook_url=url)
    assert "webhook_url" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        EnvironmentVariableTemplate(name="t", webhook_url=url).full_clean()
    assert "webhook_url" in error.value.message_dict


def test_a_webhook_without_a_secret_is_refused_naming_the_field(settings, mock_host):
    settings.CONTAINER_MANAGER = {}
    with pytest.raises(ValidationError) as error:
        create_job("img", host=mock_host, webhook_url="https://example.com/hook")
    assert "WEBHOOK_SECRET" in str(error.value.message_dict["webhook_url"])


# -- delivery ----------------------------------------------------------------------------


def test_failed_tries_are_retried_with_backoff_until_one_is_delivered(webhook_settings):
    receiver = Receiver(script=[500, "hang", "reset"])
    try:
        job = create_job("img", host=make_host(), webhook_url=receiver.url)
        run_worker()
        job.refresh_from_db()
        delivery = job.webhook_deliveries.get()
        if delivery.status == "pending":  # the worker left between two tries: finish here
            deliver_all()
            delivery.refresh_from_db()
    finally:
        receiver.close()
    assert (delivery.status, delivery.attempts) == ("delivered", 4), delivery.history
    assert len(receiver.requests) == 4 and all(r["verified"] for r in receiver.requests)
    # The same delivery each time: one id, one body (signed anew for each try).
    assert {r["headers"]["X-Container-Jobs-Delivery"] for r in receiver.requests} == {
        str(delivery.pk)
    }
    assert len({r["body"] for r in receiver.requests}) == 1
    first, hung, reset, last = delivery.history
    assert (first["status_code"], first["answer"]) == (500, "receiver says no")
    assert "within 1 s" in hung["error"] and hung["duration_ms"] >= 900
    assert "status_code" not in reset and reset["error"]
    assert last["status_code"] == 200 and delivery.delivered_at is not None
    assert [entry["attempt"] for entry in delivery.history] == [1, 2, 3, 4]


def test_a_delivery_is_given_up_after_the_most_tries(webhook_settings):
    webhook_settings.CONTAINER_MANAGER["WEBHOOK_MAX_ATTEMPTS"] = 3
    receiver = Receiver(tail_status=503)
    try:
        job = create_job("img", host=make_host(), webhook_url=receiver.url)
        run_worker()
        deliver_all()
    finally:
        receiver.close()
    delivery = job.webhook_deliveries.get()
    assert (delivery.status, delivery.attempts, len(receiver.requests)) == ("failed", 3, 3)
    assert SECRET not in json.dumps(delivery.history) + delivery.body


def test_a_redirect_to_the_same_host_is_followed(webhook_settings):
    receiver = Receiver()
    receiver.script = [("redirect", receiver.url + "/moved")]
    try:
        job = create_job("img", host=make_host(), webhook_url=receiver.url + "/old")
        run_worker()
    finally:
        receiver.close()
    assert [r["path"] for r in receiver.requests] == ["/old", "/moved"]
    assert all(r["verified"] for r in receiver.requests)
    assert job.webhook_deliveries.get().status == "delivered"


def test_a_redirect_to_another_host_is_not_followed(webhook_settings):
    elsewhere = Receiver()
    receiver = Receiver(script=[("redirect", elsewhere.url.replace("127.0.0.1", "localhost"))])
    try:
        job = create_job("img", host=make_host(), webhook_url=receiver.url)
        run_worker()
        delivery = job.webhook_deliveries.get()
        # Refused: a failed try, to be made again later.
        assert delivery.history[0]["status_code"] == 302
        assert "redirect to another host (http://localhost:" in delivery.history[0]["error"]
        assert elsewhere.requests == []
    finally:
        receiver.close()
        elsewhere.close()


def test_the_admin_can_deliver_again(webhook_settings, receiver):
    job = create_job("img", host=make_host(), webhook_url=receiver.url)
    run_worker()
    deliveries = WebhookDelivery.objects.filter(job=job)
    assert webhooks.deliver_again(deliveries) == 1
    deliver_all()
    assert len(receiver.requests) == 2
    assert len(deliveries.get().history) == 2


# -- worker processes --------------------------------------------------------------------


def process_settings(**more):
    return {"CONTAINER_MANAGER_SETTINGS": json.dumps({**SETTINGS, **more})}


@pytest.mark.processes
def test_a_worker_killed_mid_delivery_loses_nothing(webhook_settings, worker_processes):
    """The receiver holds the first POST; the worker is killed with SIGKILL; once the lease
    runs out, a new worker delivers it again: at least once, with the same delivery id."""
    receiver = Receiver(script=["hold"])
    try:
        env = process_settings(WEBHOOK_TIMEOUT_SECONDS=30.0)
        job = create_job("img", host=make_host(), webhook_url=receiver.url)
        first = worker_processes.start("--poll-interval", "0.1", env=env)
        assert receiver.held.wait(30), worker_processes.logs()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        delivery = job.webhook_deliveries.get()
        assert (delivery.status, delivery.attempts) == ("pending", 1)
        # Leased (for WEBHOOK_TIMEOUT_SECONDS + a margin): no worker takes it meanwhile.
        second = worker_processes.start(
            "--until-idle", "--poll-interval", "0.1", env=process_settings()
        )
        assert second.wait(30) == 0, worker_processes.logs()
        assert len(receiver.requests) == 1
        # The lease runs out (made to here, rather than waited for): the next worker takes it.
        WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        third = worker_processes.start(
            "--until-idle", "--poll-interval", "0.1", env=process_settings()
        )
        assert third.wait(30) == 0, worker_processes.logs()
    finally:
        receiver.close()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 2), worker_processes.logs()
    ids = [r["headers"]["X-Container-Jobs-Delivery"] for r in receiver.requests]
    assert ids == [str(delivery.pk)] * 2
    assert all(r["verified"] for r in receiver.requests)


@pytest.mark.processes
def test_a_worker_stopped_with_deliveries_pending_loses_none(webhook_settings, worker_processes):
    """The receiver is down while a worker tries; the worker stops; once the receiver is
    back, a new worker delivers every one of them."""
    receiver = Receiver(tail_status=503)
    try:
        host = make_host()
        jobs = [create_job("img", host=host, hold=True, webhook_url=receiver.url) for _ in range(5)]
        for job in jobs:
            cancel_job(job)
        first = worker_processes.start("--poll-interval", "0.1", env=process_settings())
        tried = WebhookDelivery.objects.filter(attempts__gte=2)
        assert wait_until(lambda: tried.count() == 5, 30), worker_processes.logs()
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, worker_processes.logs()
        assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"pending"}
        receiver.tail_status = 200
        # Their backoff has passed (made to here, rather than waited for).
        WebhookDelivery.objects.update(next_attempt_at=timezone.now())
        second = worker_processes.start(
            "--until-idle", "--poll-interval", "0.1", env=process_settings()
        )
        assert second.wait(60) == 0, worker_processes.logs()
    finally:
        receiver.close()
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}
    delivered = [r for r in receiver.requests if r["verified"]]
    assert {json.loads(r["body"])["job_id"] for r in delivered} == {str(job.pk) for job in jobs}


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# -- where people see them ----------------------------------------------------------------


@pytest.fixture
def delivered_job(webhook_settings):
    receiver = Receiver(script=[503])
    try:
        job = create_job("img", host=make_host(), name="hooked", webhook_url=receiver.url + "/h")
        run_worker()
        deliver_all()
    finally:
        receiver.close()
    return job


def test_the_jobs_admin_page_shows_its_deliveries(admin_client, delivered_job):
    from django.urls import reverse

    page = admin_client.get(
        reverse("admin:container_manager_containerjob_change", args=[delivered_job.pk])
    )
    assert page.status_code == 200
    delivery = delivered_job.webhook_deliveries.get()
    text = page.text
    assert "Webhook deliveries" in text and f"{delivery.url}" in text
    assert "HTTP 503" in text and "receiver says no" in text and "Delivered" in text


def test_the_deliveries_admin_lists_filters_shows_and_delivers_again(admin_client, delivered_job):
    from django.urls import reverse

    delivery = delivered_job.webhook_deliveries.get()
    changelist = reverse("admin:container_manager_webhookdelivery_changelist")
    page = admin_client.get(changelist, {"status__exact": "delivered"})
    assert page.status_code == 200 and "HTTP 200" in page.text and "hooked" in page.text
    assert "hooked" not in admin_client.get(changelist, {"status__exact": "failed"}).text
    change = reverse("admin:container_manager_webhookdelivery_change", args=[delivery.pk])
    page = admin_client.get(change)
    assert page.status_code == 200 and "job.finished" in page.text
    assert (
        admin_client.get(reverse("admin:container_manager_webhookdelivery_add")).status_code == 403
    )
    response = admin_client.post(
        changelist, {"action": "deliver_again", "_selected_action": [delivery.pk]}
    )
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert len(delivery.history) == 2  # kept: a new round of tries adds to it


def test_show_prints_the_deliveries(delivered_job):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("manage_container_job", "show", str(delivered_job.pk), stdout=out)
    text = out.getvalue()
    assert "Webhook deliveries:" in text and "delivered" in text and "HTTP 200" in text
    out = StringIO()
    call_command("manage_container_job", "show", str(delivered_job.pk), "--json", stdout=out)
    data = json.loads(out.getvalue())
    (delivery,) = data["webhook_deliveries"]
    assert (delivery["status"], delivery["attempts"], delivery["last_answer"]) == (
        "delivered",
        2,
        "HTTP 200",
    )
    assert [entry["status_code"] for entry in delivery["history"]] == [503, 200]
    assert data["webhook_url"].endswith("/h")
    assert SECRET not in out.getvalue()


def test_create_takes_a_webhook_url(webhook_settings, mock_host):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command(
        "manage_container_job",
        "create",
        "--host",
        "mock",
        "--image",
        "img",
        "--webhook-url",
        "https://example.com/hook",
        "--json",
        stdout=out,
    )
    assert json.loads(out.getvalue())["webhook_url"] == "https://example.com/hook"

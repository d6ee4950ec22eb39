"""The HTTP API through Django's test client: every endpoint, token and session auth, the
admin's permissions, bad input named by field, and the OpenAPI schema."""

import io
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client

from container_manager import api
from container_manager.models import ApiToken, ContainerJob
from container_manager.serializers import job_to_dict
from container_manager.states import JobStatus

pytestmark = pytest.mark.django_db


def user_with(*codenames: str, username="alice") -> User:
    user = User.objects.create_user(username, password="pw")
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def client_for(user: User) -> Client:
    _, token = ApiToken.objects.issue(user, "tests")
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def operator(mock_host):
    return client_for(
        user_with(
            "view_containerjob", "add_containerjob", "cancel_containerjob", "retry_containerjob"
        )
    )


def post(client, path, body=None):
    return client.post(path, json.dumps(body or {}), content_type="application/json")


def test_create_then_show_gives_the_cli_json(operator):
    answer = post(
        operator,
        "/api/jobs",
        {"image": "alpine", "command": ["echo", "hi"], "host": "mock", "memory_limit": 64},
    )
    assert answer.status_code == 201, answer.content
    created = answer.json()
    job = ContainerJob.objects.get(pk=created["id"])
    assert (job.memory_limit, job.created_by.username) == (64, "alice")
    shown = operator.get(f"/api/jobs/{job.pk}")
    assert shown.status_code == 200
    assert shown.json() == json.loads(json.dumps(job_to_dict(job)))


@pytest.mark.parametrize(
    "body, field",
    [
        ({"image": "alpine", "host": "mock", "memory_limit": -1}, "memory_limit"),
        ({"image": "alpine", "host": "nowhere"}, "host"),
        ({"image": "alpine", "command": "echo hi"}, "command"),
        ({"image": "alpine", "colour": "blue"}, "colour"),
        ({"command": ["true"]}, "image"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(operator, body, field):
    answer = post(operator, "/api/jobs", body)
    assert answer.status_code == 422, answer.content
    assert field in [item["loc"][-1] for item in answer.json()["detail"]], answer.json()
    assert not ContainerJob.objects.exists()


def test_list_filters_and_pages(operator, mock_host):
    jobs = [api.create_job("alpine", [str(n)], host=mock_host) for n in range(3)]
    api.cancel_job(jobs[0])
    page = operator.get("/api/jobs", {"limit": 2}).json()
    assert page["count"] == 3 and len(page["items"]) == 2
    cancelled = operator.get("/api/jobs", {"status": "cancelled"}).json()
    assert [item["id"] for item in cancelled["items"]] == [str(jobs[0].pk)]
    assert operator.get("/api/jobs", {"host": "mock"}).json()["count"] == 3
    assert operator.get("/api/jobs", {"host": "other"}).json()["count"] == 0
    assert operator.get("/api/jobs", {"status": "sleeping"}).status_code == 422
    assert operator.get("/api/jobs", {"array": "not-an-array"}).status_code == 404


def test_logs_stored_and_followed(operator, mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)
    ContainerJob.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED, stdout="out", stderr="err\n"
    )
    for query in ({}, {"follow": "1"}):
        answer = operator.get(f"/api/jobs/{job.pk}/logs", query)
        assert answer.status_code == 200
        assert answer["Content-Type"] == "text/plain; charset=utf-8"
        assert b"".join(answer.streaming_content) == b"out\nerr\n"


def test_cancel_and_retry(operator, mock_host):
    job = api.create_job("alpine", ["true"], host=mock_host)
    cancelled = post(operator, f"/api/jobs/{job.pk}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = post(operator, f"/api/jobs/{job.pk}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"][0]["msg"]
    retried = post(operator, f"/api/jobs/{job.pk}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"


def test_unknown_job_is_404(operator):
    assert operator.get("/api/jobs/00000000-0000-0000-0000-000000000000").status_code == 404


def test_no_or_a_wrong_or_a_revoked_token_is_401(mock_host):
    assert Client().get("/api/jobs").status_code == 401
    wrong = Client(headers={"Authorization": "Bearer cmj_not-a-token"})
    assert wrong.get("/api/jobs").status_code == 401
    user = user_with("view_containerjob")
    client = client_for(user)
    assert client.get("/api/jobs").status_code == 200
    ApiToken.objects.filter(user=user).delete()
    assert client.get("/api/jobs").status_code == 401
    user.is_active = False
    user.save()
    assert client_for(user).get("/api/jobs").status_code == 401


@pytest.mark.parametrize(
    "method, path, needs",
    [
        ("get", "/api/jobs", "view_containerjob"),
        ("get", "/api/jobs/{id}", "view_containerjob"),
        ("get", "/api/jobs/{id}/logs", "view_containerjob"),
        ("post", "/api/jobs", "add_containerjob"),
        ("post", "/api/jobs/{id}/cancel", "cancel_containerjob"),
        ("post", "/api/jobs/{id}/retry", "retry_containerjob"),
        ("get", "/api/jobs/{id}?reveal_secrets=1", "reveal_secrets"),
    ],
)
def test_each_endpoint_needs_the_admins_permission(mock_host, method, path, needs):
    job = api.create_job("alpine", ["true"], host=mock_host, hold=True)
    everything_else = [
        codename
        for codename in (
            "view_containerjob",
            "add_containerjob",
            "cancel_containerjob",
            "retry_containerjob",
            "reveal_secrets",
        )
        if codename != needs
    ]
    client = client_for(user_with(*everything_else, username="bob"))
    url = path.format(id=job.pk)
    answer = post(client, url, {"image": "alpine"}) if method == "post" else client.get(url)
    assert answer.status_code == 403, answer.content
    detail = answer.json()["detail"]
    assert detail.startswith("user 'bob' may not ")
    assert detail.endswith(f"(needs container_manager.{needs})")


def test_a_logged_in_session_works_with_its_csrf_token(mock_host):
    user_with("view_containerjob", "add_containerjob")
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="alice", password="pw")
    assert client.get("/api/jobs").status_code == 200
    body = json.dumps({"image": "alpine", "host": "mock"})
    refused = client.post("/api/jobs", body, content_type="application/json")
    assert refused.status_code == 403  # a cookie alone could be a forged cross-site request
    client.get("/admin/login/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    answer = client.post(
        "/api/jobs", body, content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert answer.status_code == 201, answer.content


def test_the_openapi_schema_lists_every_endpoint():
    schema = Client().get("/api/openapi.json").json()
    assert set(schema["paths"]) == {
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/logs",
        "/api/jobs/{job_id}/cancel",
        "/api/jobs/{job_id}/retry",
    }
    assert "image" in schema["components"]["schemas"]["JobIn"]["required"]
    assert {"BearerToken", "SessionAuth"} <= set(schema["components"]["securitySchemes"])


def test_tokens_made_listed_and_revoked_by_the_command():
    user_with(username="carol")
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "container_jobs_api_token", "create", "carol", "--name", "ci", stdout=out, stderr=err
    )
    token = out.getvalue().strip()
    assert token.startswith("cmj_") and "shown once" in err.getvalue()
    row = ApiToken.objects.get()
    assert row.key_hash != token and token not in row.key_hash  # only a hash is kept
    assert ApiToken.objects.user_for(token).username == "carol"
    listing = io.StringIO()
    call_command("container_jobs_api_token", "list", stdout=listing)
    assert listing.getvalue().startswith(f"{row.pk}  {token[:12]}…  carol  ci  ")
    call_command("container_jobs_api_token", "revoke", str(row.pk), stdout=io.StringIO())
    assert ApiToken.objects.user_for(token) is None

"""schemathesis against the live OpenAPI schema: no 5xx, every response conforms, bad data refused."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS
from schemathesis.config import ChecksConfig, OperationConfig
from schemathesis.filters import FilterSet

from queueapp import apikeys
from taskqueue_project.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/openapi.json", application)
# PostgreSQL's jsonb cannot hold NUL or unpaired surrogates; the API refuses them with a 422 that
# says so (tests/test_api.py). Generate strings it can store, or every positive case would be noise.
schema.config.generation.update(allow_x00=False, codec="utf-8")
# The schema cannot say which arguments each task's function takes, so a schema-valid submission can
# be refused with 422 invalid_task for them (tests/test_submission_checks.py): for the two submission
# operations, and for them only, 422 is an accepted answer to valid data.
_submissions = FilterSet()
_submissions.include(method="POST", path=["/api/tasks", "/api/tasks/bulk"])
schema.config.operations.operations.append(
    OperationConfig(
        filter_set=_submissions,
        checks=ChecksConfig.from_dict(
            {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "409", "422", "429"]}}
        ),
    )
)


@pytest.fixture
def auth_header(transactional_db: None) -> dict[str, str]:
    return {"Authorization": f"Bearer {apikeys.create_api_key('schemathesis')[1]}"}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case: schemathesis.Case, auth_header: dict[str, str]) -> None:
    case.call_and_validate(headers=auth_header, checks=CHECKS.get_all())

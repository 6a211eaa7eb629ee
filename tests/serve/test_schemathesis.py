"""Property-based requests generated from the service's own /openapi.json (schemathesis): valid and
invalid bodies for every operation, with a valid key; whatever they hold, the answer is never a 5xx,
its status is one the schema documents, and its body matches the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve.conftest import add_keys, running, serve_settings
from tests.worlds import Workspace

EXAMPLES = 25  # per operation and mode: the whole module stays well under a minute
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api(search_world: Workspace, tmp_path_factory: pytest.TempPathFactory):
    with running(serve_settings(search_world.index, tmp_path_factory.mktemp("schemathesis"))) as server:
        add_keys(server)
        yield server


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_generated_request_gets_a_server_error(api, mode):
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {api.keys['internal']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/search", "POST /v1/context", "POST /v1/feedback"}
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to get wrong in a GET without parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case):
            case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS, timeout=60)

        check()

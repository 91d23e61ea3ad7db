"""The service's OpenAPI document is enough to generate a typed client model: pydantic models
generated from the served document (datamodel-code-generator, as an integrator would run it)
read the real introspection answers, the token's claims included."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from . import service as svc


@pytest.fixture(scope="module")
def service() -> Iterator[svc.Service]:
    yield from svc.start()


@pytest.fixture(scope="module")
def models(service: svc.Service, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    folder = tmp_path_factory.mktemp("models")
    document = folder / "openapi.json"
    document.write_text(httpx.get(f"{service.url}/public-api/openapi.json").text)
    generated = folder / "neo_models.py"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "datamodel_code_generator",
            "--input",
            str(document),
            "--input-file-type",
            "openapi",
            "--output-model-type",
            "pydantic_v2.BaseModel",
            "--output",
            str(generated),
        ],
        check=True,
        capture_output=True,
    )
    spec = importlib.util.spec_from_file_location("neo_models", generated)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["neo_models"] = module
    spec.loader.exec_module(module)
    return module


def introspect(service: svc.Service, token: str) -> httpx.Response:
    return httpx.post(
        f"{service.url}/oauth2/introspect",
        auth=("k-acme", svc.ACME_KEY),
        data={"token": token},
    )


def test_generated_models_read_both_introspection_answers(
    service: svc.Service, models: ModuleType
) -> None:
    minted = service.mint()
    answer = models.Introspection.model_validate(introspect(service, minted["token"]).json())
    active = answer.root
    assert isinstance(active, models.ActiveToken)
    assert isinstance(active, models.SessionClaims)
    assert (active.session_id, active.client_id, active.sub) == ("s-acme-1", "acme", "pat")
    assert active.allowed_agent_ids == [101]
    assert str(active.jti) == minted["jti"]
    assert active.exp - active.iat == minted["expires_in"]

    # The envelope route's `data` is the same schema.
    envelope = httpx.post(
        f"{service.url}/public-api/sessions/introspect",
        headers={"authorization": f"Bearer {svc.ACME_KEY}"},
        json={"token": minted["token"]},
    )
    data = models.IntrospectionEnvelope.model_validate(envelope.json()).data.root
    assert isinstance(data, models.ActiveToken)
    assert data.session_id == "s-acme-1"

    service.revoke(minted["jti"])
    answer = models.Introspection.model_validate(introspect(service, minted["token"]).json())
    assert isinstance(answer.root, models.InactiveToken)

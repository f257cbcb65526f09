"""A fake Google OAuth token endpoint and a fake Vertex AI endpoint, served by one app.

``POST /token`` verifies the RS256 JWT assertion of a service account with the PUBLIC key of the
RSA key the test generated, and answers a tampered or wrongly signed one with Google's
``400 {"error": "invalid_grant"}``. The JWT's ``aud`` is always Google's own token URI, whatever
``token_uri`` the key JSON names, so it is checked against that constant, not this server.
Issued tokens expire in ``expires_in`` seconds; token calls are logged in ``token_requests``
(their ``json`` is the form).

``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent`` accepts only
tokens the token endpoint issued (else Google's 401 ``UNAUTHENTICATED``) and answers like the
Gemini fake (``tests.fakes.gemini.response``). Failures, queued with ``fake.script(...)``: the
Google error replies of ``tests.fakes.gemini`` and ``google_reply(code, status, text)``.
"""

import base64
import json
import secrets
import time
from typing import Any, Self
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes import gemini
from tests.fakes.common import FakeProvider, LoggedRequest, Reply

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
EMAIL = "worker@tenant-project.iam.gserviceaccount.com"
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential."
)


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account_info(key: rsa.RSAPrivateKey, token_uri: str) -> dict[str, Any]:
    """A service-account key JSON as Google's console downloads it."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "tenant-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }


def google_reply(code: int, status: str, text: str) -> Reply:
    """A Google error answer without details (``PERMISSION_DENIED``, ``NOT_FOUND``, ...)."""
    return Reply(status=code, body=gemini.error_body(code, status, text, []))


class VertexFake(FakeProvider):
    def __init__(self, public_key: rsa.RSAPublicKey, *, expires_in: int = 3600) -> None:
        self.public_key = public_key
        self.expires_in = expires_in
        self.issued: set[str] = set()
        self.token_requests: list[LoggedRequest] = []
        super().__init__(key="")  # what it checks are the JWT's signature and issued tokens

    def reset(self) -> Self:
        self.token_requests.clear()
        self.issued.clear()
        self.expires_in = 3600
        return super().reset()

    def build_app(self) -> FastAPI:
        app = FastAPI()
        app.post("/token")(self._token)
        path = "/v1/projects/{project}/locations/{location}/publishers/google/models/{model}"
        app.post(path + ":generateContent")(self._generate)
        return app

    async def _generate(self, request: Request, model: str) -> Response:
        return await self.answer(
            request, deny=self._deny, success=lambda body: gemini.response(body, model)
        )

    def _deny(self, logged: LoggedRequest) -> Response | None:
        token = logged.headers.get("authorization", "").removeprefix("Bearer ")
        if token in self.issued:
            return None
        return gemini.error(401, "UNAUTHENTICATED", UNAUTHENTICATED)

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.token_requests.append(
            LoggedRequest(request.method, request.url.path, "", str(request.url), headers, form)
        )
        if form.get("grant_type") != JWT_BEARER or not self._valid(form.get("assertion", "")):
            invalid = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            return JSONResponse(invalid, 400)
        token = f"ya29.fake-{secrets.token_urlsafe(12)}"
        self.issued.add(token)
        return JSONResponse(
            {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    def _valid(self, assertion: str) -> bool:
        try:
            header, payload, signature = assertion.split(".")
            self.public_key.verify(
                _b64decode(signature),
                f"{header}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            claims = json.loads(_b64decode(payload))
        except (ValueError, InvalidSignature):
            return False
        return (
            json.loads(_b64decode(header)).get("alg") == "RS256"
            and claims.get("iss") == EMAIL
            and claims.get("aud") == GOOGLE_TOKEN_AUDIENCE
            and CLOUD_PLATFORM in str(claims.get("scope", "")).split()
            and int(claims.get("exp", 0)) > time.time()
        )


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

"""A hop: one place a run can be served, as stored in the run's chain snapshot."""

from pydantic import BaseModel, ConfigDict, Field

SHARED = "shared"


class Hop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    credential: str = SHARED  # "shared" or "byok:<name>"
    model: str | None = None
    region: str | None = None
    timeout_s: float = Field(default=60.0, gt=0, le=3600)

    @property
    def credential_kind(self) -> str:
        return "shared" if self.credential == SHARED else "byok"

    @property
    def credential_name(self) -> str | None:
        return None if self.credential == SHARED else self.credential.removeprefix("byok:")

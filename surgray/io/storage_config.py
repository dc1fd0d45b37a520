"""`StorageConfig`: the one `storage:` section of every surgray config (annotate, train, serve).

It holds the fsspec options of the object store the config's URIs live in and builds the
`Storage` object passed down with them. Credentials never live here: configs are logged,
copied into job submissions and kept next to the outputs, so keys come from the environment
(AWS_ACCESS_KEY_ID, ...), ~/.aws or the machine's role.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from surgray.io.storage import Storage

# Option names that carry credentials; see the module docstring.
CREDENTIAL_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "session_token",
    }
)


class StorageConfig(BaseModel):
    """fsspec options for object storage (s3fs names); credentials come from the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    options: dict[str, Any] = Field(default_factory=dict)  # passed to fsspec as they are

    @field_validator("options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        found = sorted(k for k in value if k.lower() in CREDENTIAL_KEYS)
        if found:
            raise ValueError(
                f"credentials {found} do not belong in the config; use the environment "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), ~/.aws or the machine's role"
            )
        return value

    def fsspec_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        if self.anon:
            options["anon"] = True
        options.update(self.options)
        return options

    def build(self) -> Storage:
        """The one storage object a job passes down with its URIs."""
        return Storage(self.fsspec_options())

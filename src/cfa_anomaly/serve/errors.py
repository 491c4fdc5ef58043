"""The errors the HTTP service answers with: an HTTP status, a short code and a reason for the user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# status -> the codes it carries; docs/deployment.md ("HTTP service") documents the same table.
STATUS_OF_CODE = {
    "empty_upload": 400,  # no bytes, or no `file` / `files` field in a multipart form
    "bad_request": 400,  # a malformed multipart form or query parameter
    "unauthorized": 401,  # no bearer token, or a wrong one, where the service asks for one
    "not_an_image": 415,  # bytes that no image decoder recognises
    "corrupt_image": 422,  # a recognised image that cannot be decoded (truncated, broken data)
    "upload_too_large": 413,  # a body or file over --max-upload-mb
    "too_many_pixels": 413,  # width x height over --max-pixels (read from the header, before decoding)
    "too_many_files": 413,  # a batch with more files than the service accepts
    "overloaded": 503,  # the inference queue is full
    "inference_timeout": 504,  # no result within --timeout-s
    "inference_failed": 500,  # the model raised (logged); the service keeps running
    "internal_error": 500,  # anything else unexpected (logged)
}


@dataclass
class ServeError(Exception):
    """A request the service refuses or cannot answer; `code` is one of STATUS_OF_CODE."""

    code: str
    reason: str

    def __post_init__(self) -> None:
        super().__init__(self.reason)

    @property
    def status(self) -> int:
        return STATUS_OF_CODE[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "status": self.status, "reason": self.reason}

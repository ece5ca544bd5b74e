"""The emulator's error: an API failure as PVE reports it (status, reason phrase, per-parameter errors)."""

from __future__ import annotations


class ApiError(Exception):
    """An API failure: ``status`` and the message (sent as HTTP reason phrase), plus per-parameter errors."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def die(message: str) -> ApiError:
    """PVE's ``die "...\\n"``: HTTP 500 with the message as reason phrase."""
    return ApiError(500, message)


def param_error(errors: dict[str, str]) -> ApiError:
    return ApiError(400, "Parameter verification failed.", errors)

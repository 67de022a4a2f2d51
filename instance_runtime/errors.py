"""Typed errors: each one knows its HTTP status and OpenAI error type, so the app maps them in
one exception handler instead of matching message text."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client should see, with its HTTP status."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(ServiceError):
    """The request is well-formed JSON but asks for something outside the limits."""

    status_code = 422
    error_type = "invalid_request_error"


class ModelNotFound(ServiceError):
    status_code = 404
    error_type = "not_found_error"


class UnsupportedRequest(ServiceError):
    """A valid request this model cannot serve (e.g. chat on a model without a chat template)."""

    status_code = 400
    error_type = "invalid_request_error"


class ModelNotReady(ServiceError):
    """The model is still loading, or failed to load."""

    status_code = 503
    error_type = "service_unavailable"


class QueueFull(ServiceError):
    status_code = 503
    error_type = "overloaded"


class ShuttingDown(ServiceError):
    status_code = 503
    error_type = "service_unavailable"


class GenerationFailed(ServiceError):
    status_code = 500
    error_type = "internal_error"


class ConfigurationError(Exception):
    """The settings ask for something this machine or this checkpoint cannot do. Shown in /status."""

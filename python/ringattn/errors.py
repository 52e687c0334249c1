"""Exceptions of the ringattn client.

Every error the server answers is an APIError (a subclass per kind) carrying
the HTTP status, the short code, the request field at fault and the message.
"""


class RingattnError(Exception):
    """Base class of every ringattn error."""


class APIError(RingattnError):
    """An error answered by the ringattn HTTP job API."""

    def __init__(self, status, code, field, message):
        self.status = status
        self.code = code
        self.field = field
        self.message = message
        # Seconds from the Retry-After header: the request was not processed
        # and may be sent again (set by the client; None otherwise).
        self.retry_after = None
        text = "%s: %s" % (field, message) if field else message
        super().__init__(text)


class InvalidArgument(APIError, ValueError):
    """400: the request is wrong; .field names what."""


class Unauthenticated(APIError):
    """401: missing or wrong bearer token."""


class NotFound(APIError, KeyError):
    """404: unknown job, output or endpoint."""

    def __str__(self):  # KeyError would quote the message
        return APIError.__str__(self)


class Conflict(APIError):
    """409: e.g. outputs of a job that has not succeeded, cancel of a finished job."""


class TooLarge(APIError, ValueError):
    """413: the request or the job is above a limit."""


class Busy(APIError):
    """429: the gateway or the cluster is busy; retry later."""


class Unimplemented(APIError, NotImplementedError):
    """501 (or a missing server capability): e.g. backward jobs."""


class Unavailable(APIError, ConnectionError):
    """503/502, or the server cannot be reached at all (status 0)."""


class JobFailed(RingattnError):
    """The job ended FAILED; .job is its status, .reason why."""

    def __init__(self, job):
        self.job = job
        self.reason = job.get("reason", "")
        super().__init__("job %s failed: %s" % (job.get("id"), self.reason))


class JobCanceled(RingattnError):
    """The job was canceled; .job is its status."""

    def __init__(self, job):
        self.job = job
        self.reason = job.get("reason", "")
        super().__init__("job %s was canceled: %s" % (job.get("id"), self.reason))


_BY_STATUS = {
    400: InvalidArgument,
    401: Unauthenticated,
    404: NotFound,
    405: InvalidArgument,
    409: Conflict,
    413: TooLarge,
    429: Busy,
    501: Unimplemented,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def from_response(status, body):
    """The exception for an error response (body: parsed JSON or None)."""
    err = {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
    code = err.get("code", "http_%d" % status)
    field = err.get("field", "")
    message = err.get("message") or "HTTP %d" % status
    cls = _BY_STATUS.get(status, APIError)
    return cls(status, code, field, message)

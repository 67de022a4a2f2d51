"""IAM for the instance's scripts: S3 requests that reach the local cloud over HTTP.

A document's script calls S3 with its own tools (the s5cmd the agent brought, or the aws CLI),
signed with the instance's key. ``InstanceRequests`` wraps moto's WSGI app: a request signed
with a key registered by ``register_instance_key`` is turned into the IAM check AWS would make
(local/iam.py ``checks_for``: GetObject/HeadObject on the object, ListBucket on the bucket with
``s3:prefix``) and judged against the instance role's policies as deployed; a refusal is S3's
403 AccessDenied, and a missing key is 403 to a role without s3:ListBucket. Other keys (the
harness, moto's own callbacks) pass untouched.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote

from local.iam import Check, Decision, Principal, checks_for

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_lock = threading.Lock()
_keys: dict[str, Principal] = {}
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")


def register_instance_key(access_key_id: str, role_arn: str, session_name: str) -> None:
    with _lock:
        _keys[access_key_id] = Principal(role_arn, session_name)


def unregister_instance_key(access_key_id: str) -> None:
    with _lock:
        _keys.pop(access_key_id, None)


def _s3_operation(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, dict[str, Any]] | None:
    """Path-style S3 REST request -> (operation, parameters) as botocore would name them."""
    bucket, _, key = unquote(path.lstrip("/")).partition("/")
    if not bucket:
        return ("ListBuckets", {}) if method == "GET" else None
    params: dict[str, Any] = {"Bucket": bucket}
    if key:
        params["Key"] = key
        operation = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
        return (operation[method], params) if method in operation else None
    if method == "HEAD":
        return "HeadBucket", params
    if method != "GET":
        return None
    if "location" in query:
        return "GetBucketLocation", params
    if "versions" in query:
        return "ListObjectVersions", params
    for name, param in (("prefix", "Prefix"), ("delimiter", "Delimiter"), ("max-keys", "MaxKeys")):
        if name in query:
            params[param] = query[name][0]
    return ("ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"), params


def _forbidden(start_response: Callable[..., Any], message: str, head: bool) -> Iterable[bytes]:
    body = (
        b""
        if head
        else (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            f"<Message>{message}</Message><RequestId>local</RequestId></Error>"
        ).encode()
    )
    start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


class InstanceRequests:
    """WSGI middleware: the instance's own S3 requests authorized as its role."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        with _lock:
            principal = _keys.get(found.group(1)) if found else None
        if found is None or principal is None or found.group(3) != "s3":
            return self.app(environ, start_response)
        region = found.group(2)
        method = environ.get("REQUEST_METHOD", "GET")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        request = _s3_operation(method, environ.get("PATH_INFO", "/"), query)
        if request is None:
            return _forbidden(
                start_response, "local.iam_http: this S3 request is not modelled", method == "HEAD"
            )
        operation, params = request
        checks, _ = checks_for("s3", operation, params, region, principal.account)
        for check in checks:
            if principal.decide(check, region) is not Decision.ALLOW:
                message = (
                    f"User: {principal.arn} is not authorized to perform: {check.action} "
                    f"on resource: {check.resource}"
                )
                return _forbidden(start_response, message, method == "HEAD")
        if operation not in ("GetObject", "HeadObject"):
            return self.app(environ, start_response)
        # S3's missing-key rule: without s3:ListBucket the answer for a missing key is 403.
        listing = Check("s3:ListBucket", f"arn:aws:s3:::{params['Bucket']}")
        if principal.decide(listing, region) is Decision.ALLOW:
            return self.app(environ, start_response)
        status: list[str] = []

        def capture(code: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            status.append(code)
            return None if code.startswith("404") else start_response(code, headers, *rest)

        body = self.app(environ, capture)
        if status and status[0].startswith("404"):
            return _forbidden(start_response, "Access Denied", method == "HEAD")
        return body


def wrap_server(server: Any) -> None:
    """Put the middleware in front of a started ThreadedMotoServer's app."""
    wsgi = server._server  # moto's werkzeug server: its handler reads .app per request
    if wsgi is not None and not isinstance(wsgi.app, InstanceRequests):
        wsgi.app = InstanceRequests(wsgi.app)

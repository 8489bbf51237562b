"""What the log lines of a request read while it is served and after: its id, and its principal (read when a line
is written); once its handler is done, the id and principal alone, not the request's context (and body)."""

from __future__ import annotations

from tests.support.contexts import request_context
from tollgate.identity import ANONYMOUS
from tollgate.identity.directory import Limits, Principal
from tollgate.pipeline.handler import _Serving


def test_the_principal_is_read_from_the_context_while_served_and_kept_alone_once_done() -> None:
    ctx = request_context(request_id="req_log_1")
    serving = _Serving("req_log_1", ctx)
    assert serving.request_id == "req_log_1" and serving.principal is None  # before the identify stage
    ctx.principal = ANONYMOUS
    assert serving.principal is ANONYMOUS  # read when a line is written, as the context has it then
    serving.done()
    ctx.principal = Principal(tenant="other", plan="p", limits=Limits(), allowed_models=None)
    assert serving.principal is ANONYMOUS and serving.request_id == "req_log_1"
    assert serving._ctx is None  # an idle connection keeps no request context through it
    serving.done()  # twice: nothing changes
    assert serving.principal is ANONYMOUS

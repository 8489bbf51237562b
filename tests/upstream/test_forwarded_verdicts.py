"""The pool's kept verdicts per client header name: the same headers pass as when every name is judged afresh."""

from __future__ import annotations

import random

from multidict import CIMultiDict, CIMultiDictProxy

from tollgate.config import config_from_dict
from tollgate.config.upstreams import CONNECTION_RELAY_HEADER, never_forwarded
from tollgate.upstream.pool import UpstreamClient, forwarded_headers

NAMES = [
    "Host",
    "Accept",
    "accept-language",
    "User-Agent",
    "X-Stainless-Lang",
    "x-stainless-os",
    "Content-Type",
    "Authorization",
    "OpenAI-Organization",
    "OpenAI-Beta",
    "X-Forwarded-For",
    "X-Trace",
    "x-trace",
    "Connection",
    "connection",
    "Keep-Alive",
    "TE",
    "X-Tollgate-Connection",
    "Upgrade",
    "Cookie",
    "X-Custom-A",
]
VALUES = ["keep-alive", "close", "X-Trace", "x-trace, OpenAI-Beta", "Keep-Alive, TE", "v", ""]


def judged_afresh(client: UpstreamClient, headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """What forwarded_headers gave before it kept verdicts: each name lower-cased and looked up."""
    out = []
    for name, value in headers.items():
        lower = name.lower()
        prefixes = client.forward_prefixes
        if lower in client.forward_names or (
            prefixes and lower.startswith(prefixes) and not never_forwarded(lower) and lower not in client.fixed_names
        ):
            out.append((name, value))
    if out:
        connection = headers.getall("Connection", None)
        relayed = headers.getall(CONNECTION_RELAY_HEADER, None) if CONNECTION_RELAY_HEADER in headers else None
        if relayed is not None or (
            connection is not None and (len(connection) > 1 or connection[0].lower() not in {"keep-alive", "close"})
        ):
            named = {t.strip().lower() for v in (*(connection or ()), *(relayed or ())) for t in v.split(",")}
            out = [(name, value) for name, value in out if name.lower() not in named]
    return out


def test_kept_verdicts_pass_what_judging_each_name_afresh_passes() -> None:
    doc = {
        "upstreams": {
            "u": {"base_url": "http://127.0.0.1:9/v1", "forward_headers": ["user-agent", "x-trace", "openai-*", "x-*"]}
        },
        "models": {"m": {"deployments": [{"upstream": "u"}]}},
    }
    client = UpstreamClient(config_from_dict(doc, env={}).upstreams["u"])
    rng = random.Random(22)
    for _ in range(2000):  # the same client throughout: later requests are judged by the kept verdicts
        lines = [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randint(0, 8))]
        headers = CIMultiDictProxy(CIMultiDict(lines))
        assert forwarded_headers(client, headers) == judged_afresh(client, headers), lines
    assert len(client.verdicts) <= 256

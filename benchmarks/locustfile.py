"""Multi-tenant traffic for locust: tenants on several plans, streaming and not, one tenant over its limits.

Each simulated user is one tenant's client, taken in turn (by plan weight) from the tenants of
a gateway config (their plaintext ``key:`` entries; default: ``config/demo.yaml``,
or the demo key when that file declares none). It sends chat completions (some
streamed, read to ``[DONE]``) and embeddings with think time between them; the
tenants named by ``--tollgate-over-limit`` send without pause so that they hit
their limits. A 429 is not an error: it is reported on its own row (``... [429]``)
and counted per tenant, and the test's exit code ignores it.

    locust -f benchmarks/locustfile.py --headless -u 40 -r 20 -t 60s \\
        --host http://127.0.0.1:8080 --tollgate-config benchmarks/locust.gateway.yaml --only-summary

Options (after the locust ones): ``--tollgate-config FILE`` (tenants and keys),
``--tollgate-over-limit NAMES`` (comma-separated; default ``noisy``),
``--tollgate-stream-share 0.3`` (fraction of chat requests streamed).
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from locust import HttpUser, events, task
from locust.env import Environment

from tollgate.process.demo import DEMO_API_KEY

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "config" / "demo.yaml"
PLAN_WEIGHTS = {"enterprise": 5, "government": 4, "small_business": 3, "education": 2, "personal": 1}
PROMPTS = (
    "Summarise the attached ticket in one sentence.",
    "Write a haiku about rate limits.",
    "Translate 'the gateway is healthy' into French.",
    "List three uses of a token bucket.",
)


@dataclass(frozen=True)
class Tenant:
    name: str
    plan: str
    key: str
    weight: int
    over_limit: bool


@dataclass
class Tally:
    """Per-tenant outcome counts for the whole run (kept on the locust Environment, not in a module global)."""

    sent: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    limited: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_token_ms: list[float] = field(default_factory=list)  # streams: time to the first SSE line

    def lines(self, tenants: list[Tenant]) -> list[str]:
        out = [f"{'tenant':<16}{'plan':<16}{'mode':<12}{'sent':>9}{'2xx':>9}{'429':>9}{'errors':>9}"]
        for t in tenants:
            mode = "over-limit" if t.over_limit else "normal"
            out.append(
                f"{t.name:<16}{t.plan:<16}{mode:<12}{self.sent[t.name]:>9}{self.ok[t.name]:>9}{self.limited[t.name]:>9}{self.errors[t.name]:>9}"
            )
        total = [sum(c.values()) for c in (self.sent, self.ok, self.limited, self.errors)]
        out.append(f"{'total':<44}{total[0]:>9}{total[1]:>9}{total[2]:>9}{total[3]:>9}")
        if self.first_token_ms:
            ttft = sorted(self.first_token_ms)
            pick = [ttft[min(len(ttft) - 1, int(q * len(ttft)))] for q in (0.5, 0.95, 0.99)]
            out.append(
                f"streams: time to first token p50 {pick[0]:.1f} ms, p95 {pick[1]:.1f} ms, p99 {pick[2]:.1f} ms ({len(ttft)} streams)"
            )
        return out


def tenants_from_config(path: Path, over_limit: set[str]) -> list[Tenant]:
    """Tenants with a plaintext key in a gateway config file (hashed keys cannot be sent, so they are skipped)."""
    doc = yaml.safe_load(path.read_text()) or {}
    tenants = []
    for name, spec in (doc.get("tenants") or {}).items():
        spec = spec or {}
        if spec.get("status", "active") != "active":
            continue
        keys = [
            k["key"]
            for k in spec.get("keys") or []
            if isinstance(k, dict) and isinstance(k.get("key"), str) and "${" not in k["key"]
        ]
        if keys:
            plan = str(spec.get("plan", ""))
            tenants.append(Tenant(name, plan, keys[0], PLAN_WEIGHTS.get(plan, 1), name in over_limit))
    return tenants


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--tollgate-config",
        default=str(DEFAULT_CONFIG),
        help="gateway config whose tenants (plaintext keys) send the traffic",
    )
    parser.add_argument(
        "--tollgate-over-limit", default="noisy", help="comma-separated tenants that send without pause"
    )
    parser.add_argument(
        "--tollgate-stream-share", type=float, default=0.3, help="fraction of chat completions streamed"
    )


@events.init.add_listener
def _setup(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    config = Path(options.tollgate_config if options else DEFAULT_CONFIG)
    over = {n.strip() for n in (options.tollgate_over_limit if options else "noisy").split(",") if n.strip()}
    tenants = tenants_from_config(config, over)
    if not tenants:
        tenants = [Tenant("demo", "demo", DEMO_API_KEY, 1, False)]
    environment.tollgate_tenants = tenants  # type: ignore[attr-defined]
    # Users take tenants in this order, so that every tenant (the over-limit ones too) has a user from
    # the len(tenants)-th user on, and plans get users in proportion to their weight.
    environment.tollgate_schedule = [t for r in range(max(t.weight for t in tenants)) for t in tenants if t.weight > r]  # type: ignore[attr-defined]
    environment.tollgate_users = 0  # type: ignore[attr-defined]
    environment.tollgate_tally = Tally()  # type: ignore[attr-defined]
    environment.tollgate_stream_share = options.tollgate_stream_share if options else 0.3  # type: ignore[attr-defined]
    print(
        f"tollgate: {len(tenants)} tenants from {config}: "
        + ", ".join(f"{t.name} ({t.plan}{', over limit' if t.over_limit else ''})" for t in tenants),
        file=sys.stderr,
    )


@events.quitting.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    tally: Tally | None = getattr(environment, "tollgate_tally", None)
    if tally is not None:
        print("\nPer tenant (429 = refused by a limit, counted apart from errors):")
        print("\n".join(tally.lines(environment.tollgate_tenants)))  # type: ignore[attr-defined]


class TenantClient(HttpUser):
    """One tenant's application: mostly chat, some of it streamed, some embeddings."""

    def on_start(self) -> None:
        env: Any = self.environment
        self.tenant: Tenant = env.tollgate_schedule[env.tollgate_users % len(env.tollgate_schedule)]
        env.tollgate_users += 1
        self.tally: Tally = self.environment.tollgate_tally  # type: ignore[attr-defined]
        self.stream_share: float = self.environment.tollgate_stream_share  # type: ignore[attr-defined]
        self.headers = {"Authorization": f"Bearer {self.tenant.key}"}

    def wait_time(self) -> float:
        return 0.0 if self.tenant.over_limit else random.uniform(0.2, 1.0)

    def _settle(self, resp: Any, name: str) -> bool:
        """Classify one answer: 2xx ok, 429 on its own row (a success for locust), anything else an error."""
        tenant = self.tenant.name
        self.tally.sent[tenant] += 1
        if resp.status_code == 429:
            self.tally.limited[tenant] += 1
            resp.request_meta["name"] = f"{name} [429]"
            resp.success()
            return False
        if 200 <= resp.status_code < 300:
            self.tally.ok[tenant] += 1
            return True
        self.tally.errors[tenant] += 1
        resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
        return False

    @task(7)
    def chat(self) -> None:
        body = {
            "model": random.choice(("gpt-4o-mini", "gpt-4o-mini", "gpt-4o")),
            "max_tokens": random.choice((16, 32, 64)),
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
        }
        if random.random() < self.stream_share:
            self._stream(body)
            return
        with self.client.post(
            "/v1/chat/completions", json=body, headers=self.headers, name="chat", catch_response=True
        ) as resp:
            if self._settle(resp, "chat") and "choices" not in resp.json():
                resp.failure("no choices in the answer")

    def _stream(self, body: dict[str, Any]) -> None:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=self.headers,
            name="chat stream",
            stream=True,
            catch_response=True,
        ) as resp:
            if not self._settle(resp, "chat stream"):
                return
            first: float | None = None
            done = False
            size = 0
            try:
                for line in resp.iter_lines():
                    if not line:
                        continue
                    if first is None:
                        first = time.perf_counter()
                    size += len(line)
                    done = done or line.strip() == b"data: [DONE]"
            except Exception as exc:  # a stream cut halfway is an error of this request
                self.tally.ok[self.tenant.name] -= 1
                self.tally.errors[self.tenant.name] += 1
                resp.failure(f"stream broken: {exc!r}")
                return
            # The row measures the whole stream; time to first token goes to the per-tenant summary.
            resp.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            resp.request_meta["response_length"] = size
            if first is not None:
                self.tally.first_token_ms.append((first - started) * 1000)
            if not done:
                self.tally.ok[self.tenant.name] -= 1
                self.tally.errors[self.tenant.name] += 1
                resp.failure("stream ended without data: [DONE]")

    @task(2)
    def embeddings(self) -> None:
        body = {"model": "text-embedding-3-small", "input": random.choice(PROMPTS)}
        with self.client.post(
            "/v1/embeddings", json=body, headers=self.headers, name="embeddings", catch_response=True
        ) as resp:
            self._settle(resp, "embeddings")

    @task(1)
    def models(self) -> None:
        with self.client.get("/v1/models", headers=self.headers, name="models", catch_response=True) as resp:
            self._settle(resp, "models")

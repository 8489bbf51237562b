"""A config file with many tenants, each with a plan and one API key given as sha256 (load-time measurements)."""

from __future__ import annotations

import hashlib
import sys

PLANS = ("personal", "small_business", "enterprise", "government", "education")


def many_tenants(n: int) -> str:
    lines = [
        "upstreams:",
        "  mock: {base_url: 'http://127.0.0.1:9000/v1', api_key: sk-load-test}",
        "models:",
        "  gpt-4o-mini: {deployments: [{upstream: mock}]}",
        "  gpt-4o: {deployments: [{upstream: mock}]}",
        "tenants:",
    ]
    for i in range(n):
        digest = hashlib.sha256(f"tg_key-{i:08d}-0123456789".encode()).hexdigest()
        lines += [
            f"  tenant-{i:06d}:",
            f"    plan: {PLANS[i % len(PLANS)]}",
            f"    keys: [{{id: key-{i:06d}, sha256: {digest}}}]",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m tests.config.generate 10000 > /tmp/tenants.yaml
    sys.stdout.write(many_tenants(int(sys.argv[1])))

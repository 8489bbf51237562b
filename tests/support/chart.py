"""Render deploy/helm/tollgate as ``helm template`` would (with :mod:`tests.support.gotemplate`), and write the plain
manifests of deploy/k8s from its default rendering.

    python -m tests.support.chart              # print the default rendering
    python -m tests.support.chart --write-k8s  # rewrite deploy/k8s/ from it (the tests check they are equal)
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .gotemplate import Template, helm_values

__all__ = ["CHART", "K8S", "PLAIN_RELEASE", "Rendered", "merge_values", "plain_manifest_files", "render_chart"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "tollgate"
K8S = REPO / "deploy" / "k8s"
# The plain manifests are the chart's default rendering for a release named like the chart, applied with kubectl.
PLAIN_RELEASE = "tollgate"
_DOCUMENT = re.compile(r"(?m)^---[ \t]*$")


@dataclass(frozen=True)
class Rendered:
    """One rendering: the text of each template file, its objects in file order, and NOTES.txt."""

    files: dict[str, str]
    objects: list[dict[str, Any]]
    notes: str

    def kinds(self) -> list[str]:
        return [o["kind"] for o in self.objects]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
        assert len(found) == 1, f"{len(found)} objects of kind {kind} named {name}: {self.kinds()}"
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]


def merge_values(base: Any, override: Any) -> Any:
    """Helm's merge of ``--set``/``-f`` values over the chart's: maps merge key by key, a null removes a key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _StrictLoader(yaml.SafeLoader):
    """Refuses a mapping that repeats a key (kubectl does; PyYAML would keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _documents(text: str) -> list[dict[str, Any]]:
    docs = []
    for part in _DOCUMENT.split(text):
        if not part.strip():
            continue
        doc = yaml.load(part, Loader=_StrictLoader)
        if doc is not None:
            docs.append(doc)
    return docs


def render_chart(
    values: dict[str, Any] | None = None,
    *,
    release: str = PLAIN_RELEASE,
    namespace: str = "default",
    service: str = "Helm",
    chart_dir: Path = CHART,
) -> Rendered:
    """The chart rendered with ``values`` over its values.yaml (what ``helm template RELEASE CHART`` prints)."""
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    chart_values = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
    merged = merge_values(chart_values, values or {})
    data = {
        "Values": helm_values(merged),
        "Release": {
            "Name": release,
            "Namespace": namespace,
            "Service": service,
            "IsInstall": True,
            "IsUpgrade": False,
            "Revision": 1.0,
        },
        "Chart": {
            "Name": meta["name"],
            "Version": str(meta["version"]),
            "AppVersion": str(meta.get("appVersion", "")),
            "Description": meta.get("description", ""),
        },
        "Template": {"BasePath": f"{meta['name']}/templates"},
    }
    engine = Template()
    templates = sorted((chart_dir / "templates").iterdir())
    parsed = {p.name: engine.parse(p.read_text(), p.name) for p in templates if p.is_file()}
    files: dict[str, str] = {}
    notes = ""
    for name, nodes in parsed.items():
        if name.startswith("_"):
            continue
        text = engine.run(nodes, {**data, "Template": {**data["Template"], "Name": f"{meta['name']}/templates/{name}"}})
        if name == "NOTES.txt":
            notes = text
        else:
            files[name] = text
    objects = [doc for name in files for doc in _documents(files[name])]
    return Rendered(files=files, objects=objects, notes=notes)


_K8S_HEADER = """\
# Generated from deploy/helm/tollgate with its default values (release "{release}"): the same objects `helm install`
# makes. Apply the folder with `kubectl apply -f deploy/k8s/` after creating the Secret(s) named in deployment.yaml
# (README.md, "Kubernetes"). Do not edit by hand: change the chart, then `python -m tests.support.chart --write-k8s`.
"""


def plain_manifest_files() -> dict[str, str]:
    """deploy/k8s/: one file per template of the default rendering that holds an object, with a header."""
    rendered = render_chart(service="kubectl")
    out = {}
    for name, text in rendered.files.items():
        if not _documents(text):
            continue
        body = "\n".join(line.rstrip() for line in text.strip("\n").splitlines())
        out[name] = _K8S_HEADER.format(release=PLAIN_RELEASE) + "---\n" + body.removeprefix("---\n") + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write-k8s", action="store_true", help="rewrite deploy/k8s/ from the default rendering")
    args = parser.parse_args(argv)
    if not args.write_k8s:
        rendered = render_chart()
        for name, text in rendered.files.items():
            sys.stdout.write(f"# Source: {name}\n{text}\n")
        return 0
    K8S.mkdir(parents=True, exist_ok=True)
    wanted = plain_manifest_files()
    for old in K8S.glob("*.yaml"):
        if old.name not in wanted:
            old.unlink()
    for name, text in wanted.items():
        (K8S / name).write_text(text)
        print(f"wrote {K8S / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

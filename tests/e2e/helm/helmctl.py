#!/usr/bin/env python3
"""Drive the real Helm library (PyPI helm-python-sdk, Helm v4's Go SDK) for the e2e tests.

Every subcommand prints one JSON document on stdout and exits 0 on success. On a Helm error it
prints the error to stderr and exits 3 (schema/values error) or 4 (any other Helm error), so the
Rust tests can tell a rejected value from a broken chart.

    helmctl.py lint CHART [--values-json J]
    helmctl.py validate CHART [--values-json J]
    helmctl.py render CHART --name N --namespace NS [--values-json J]
    helmctl.py install CHART --kubeconfig K --name N --namespace NS [--values-json J]
    helmctl.py upgrade CHART --kubeconfig K --name N --namespace NS [--values-json J]
    helmctl.py uninstall --kubeconfig K --name N --namespace NS
    helmctl.py values-doc CHART DOC_MD

`render` and `install` print {"objects": [...], "notes": "..."}: every rendered Kubernetes
object parsed from YAML, each with an extra "__template" key naming its template file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

import helm_python as helm
import yaml

EXIT_VALUES = 3
EXIT_HELM = 4


def _values(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.values_json is None:
        return None
    values = json.loads(args.values_json)
    if not isinstance(values, dict):
        raise SystemExit("--values-json must be a JSON object")
    return values


def _objects(manifests: dict[str, str]) -> dict[str, Any]:
    objects: list[dict[str, Any]] = []
    notes = ""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = template
                objects.append(doc)
    return {"objects": objects, "notes": notes}


def _manifest_objects(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def cmd_lint(args: argparse.Namespace) -> Any:
    return helm.lint(args.chart, _values(args), strict=True, kube_version=args.kube_version)


def cmd_validate(args: argparse.Namespace) -> Any:
    with helm.Chart.load(args.chart) as chart:
        chart.validate_schema(_values(args))
    return {"valid": True}


def cmd_render(args: argparse.Namespace) -> Any:
    with helm.Chart.load(args.chart) as chart:
        manifests = chart.render(
            _values(args), name=args.name, namespace=args.namespace, is_install=True
        )
        crds = [yaml.safe_load(crd["data"]) for crd in chart.crds]
    out = _objects(manifests)
    out["crds"] = crds
    return out


def _config(args: argparse.Namespace) -> helm.Config:
    return helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)


def cmd_install(args: argparse.Namespace) -> Any:
    with _config(args) as cfg, helm.Chart.load(args.chart) as chart:
        release = cfg.install(
            chart,
            args.name,
            _values(args),
            namespace=args.namespace,
            create_namespace=True,
            timeout=args.timeout,
        )
    return {
        "objects": _manifest_objects(release.get("manifest", "")),
        "notes": release.get("notes", ""),
        "release": {k: v for k, v in release.items() if k not in ("manifest", "chart")},
    }


def cmd_upgrade(args: argparse.Namespace) -> Any:
    with _config(args) as cfg, helm.Chart.load(args.chart) as chart:
        # The values given replace the release's values (Helm would reuse the old ones when
        # none are given).
        release = cfg.upgrade(
            chart,
            args.name,
            _values(args),
            namespace=args.namespace,
            timeout=args.timeout,
            reset_values=True,
        )
    return {
        "objects": _manifest_objects(release.get("manifest", "")),
        "release": {k: v for k, v in release.items() if k not in ("manifest", "chart")},
    }


def cmd_uninstall(args: argparse.Namespace) -> Any:
    with _config(args) as cfg:
        result = cfg.uninstall(args.name, timeout=args.timeout)
    return {"info": result.get("info", "")}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf keys of a values tree: scalars, lists and empty maps."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(_flatten(child, f"{prefix}.{key}" if prefix else key))
        return flat
    return {prefix: value}


def _lookup(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def cmd_values_doc(args: argparse.Namespace) -> Any:
    """Compare the values reference table in DOC_MD with the chart's values.yaml."""
    with open(f"{args.chart}/values.yaml", encoding="utf-8") as f:
        values = yaml.safe_load(f)
    with open(args.doc, encoding="utf-8") as f:
        doc = f.read()
    row = re.compile(r"^\|\s*`([A-Za-z0-9_.]+)`\s*\|\s*`(.*?)`\s*\|\s*(.*?)\s*\|\s*$")
    # Only the table under the "### Values" heading counts.
    marker = "\n### Values\n"
    section = doc.split(marker, 1)[1].split("\n### ", 1)[0] if marker in doc else ""
    rows: dict[str, str] = {}
    for line in section.splitlines():
        m = row.match(line)
        if m:
            rows[m.group(1)] = m.group(2)
    unknown, mismatched = [], []
    for key, shown in rows.items():
        found, value = _lookup(values, key)
        if not found:
            unknown.append(key)
            continue
        expected = json.dumps(value, separators=(",", ":"))
        if shown != expected:
            mismatched.append({"key": key, "doc": shown, "values_yaml": expected})
    missing = [
        leaf
        for leaf in _flatten(values)
        if not any(leaf == key or leaf.startswith(key + ".") for key in rows)
    ]
    return {"rows": len(rows), "unknown": unknown, "mismatched": mismatched, "missing": missing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any, *, chart: bool = True, cluster: bool = False) -> Any:
        p = sub.add_parser(name)
        if chart:
            p.add_argument("chart")
        p.add_argument("--values-json")
        if cluster:
            p.add_argument("--kubeconfig", required=True)
            p.add_argument("--name", required=True)
            p.add_argument("--namespace", required=True)
            p.add_argument("--timeout", type=int, default=120)
        p.set_defaults(func=func)
        return p

    add("lint", cmd_lint).add_argument("--kube-version")
    add("validate", cmd_validate)
    render = add("render", cmd_render)
    render.add_argument("--name", required=True)
    render.add_argument("--namespace", required=True)
    add("install", cmd_install, cluster=True)
    add("upgrade", cmd_upgrade, cluster=True)
    add("uninstall", cmd_uninstall, chart=False, cluster=True)
    add("values-doc", cmd_values_doc).add_argument("doc")

    args = parser.parse_args()
    try:
        result = args.func(args)
    except helm.HelmValuesError as e:
        print(f"values rejected: {e}", file=sys.stderr)
        return EXIT_VALUES
    except helm.HelmError as e:
        print(f"helm error ({type(e).__name__}): {e}", file=sys.stderr)
        return EXIT_HELM
    json.dump(result, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

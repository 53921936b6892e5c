#!/usr/bin/env python3
"""Push and pull a Helm chart as an OCI artifact with the real Helm library (PyPI
helm-python-sdk, Helm v4's Go SDK), over plain HTTP to loopback registries, for the e2e tests.

    chart_oci.py push CHART_DIR WORK_DIR oci://HOST/PATH
        packages CHART_DIR into WORK_DIR and pushes it under oci://HOST/PATH/<name>:<version>;
        prints {"archive": path, "digest": "sha256:..."} (the digest of the .tgz)
    chart_oci.py pull oci://HOST/PATH/NAME VERSION DEST_DIR
        pulls the chart into DEST_DIR; prints {"archive": path, "digest": "sha256:..."}
"""

from __future__ import annotations

import json
import os
import sys

import helm_python as helm


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "push":
        chart, work, remote = argv[1:]
        archive = helm.package(chart, destination=work)
        helm.push(archive, remote, plain_http=True)
    elif len(argv) == 4 and argv[0] == "pull":
        ref, version, dest = argv[1:]
        os.makedirs(dest, exist_ok=True)
        helm.pull(ref, version=version, destination=dest, plain_http=True)
        name = ref.rstrip("/").rsplit("/", 1)[-1]
        archive = os.path.join(dest, f"{name}-{version}.tgz")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps({"archive": archive, "digest": helm.digest(archive)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

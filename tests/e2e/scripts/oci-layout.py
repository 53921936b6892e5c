#!/usr/bin/env python3
"""Writes a small two-platform OCI image layout (index -> linux/amd64 + linux/arm64),
random layers from a seed, for seeding a registry with `skopeo copy --all oci:DIR:TAG`.

Usage: oci-layout.py DIR TAG [SEED]   (prints the index digest)
"""
import gzip, hashlib, io, json, os, random, sys, tarfile


def blob(root, data):
    d = hashlib.sha256(data).hexdigest()
    path = os.path.join(root, "blobs", "sha256", d)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}


def layer(seed, name):
    rnd = random.Random(seed)
    content = bytes(rnd.getrandbits(8) for _ in range(4096))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(content), 0
        t.addfile(info, io.BytesIO(content))
    diff = raw.getvalue()
    return gzip.compress(diff, mtime=0), "sha256:" + hashlib.sha256(diff).hexdigest()


def main():
    root, tag = sys.argv[1], sys.argv[2]
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    shared, shared_diff = layer(seed * 100, "shared.bin")
    manifests = []
    for i, arch in enumerate(["amd64", "arm64"]):
        own, own_diff = layer(seed * 100 + i + 1, arch + ".bin")
        config = json.dumps({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [shared_diff, own_diff]},
            "config": {"Labels": {"seed": str(seed)}},
        }, sort_keys=True).encode()
        cfg = dict(blob(root, config), mediaType="application/vnd.oci.image.config.v1+json")
        layers = [dict(blob(root, b), mediaType="application/vnd.oci.image.layer.v1.tar+gzip") for b in (shared, own)]
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": cfg, "layers": layers}, sort_keys=True).encode()
        m = dict(blob(root, manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
                 platform={"architecture": arch, "os": "linux"})
        manifests.append(m)
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": manifests}, sort_keys=True).encode()
    top = dict(blob(root, index), mediaType="application/vnd.oci.image.index.v1+json",
               annotations={"org.opencontainers.image.ref.name": tag})
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [top]}, f)
    print(top["digest"])


main()

# Mirror a tag set: every nginx 1.26+ release below 2, plus nothing else. The
# imagesync_tags data source lists the source repository's tags and filters them;
# for_each makes one imagesync resource per tag. A new matching tag at the source is one
# resource to create at the next plan; a tag that stops matching is one to destroy.
terraform {
  required_providers {
    imagesync = {
      source = "imagesync/imagesync"
    }
  }
}

variable "registry" {
  description = "Destination registry, e.g. registry.example.com or 127.0.0.1:5000"
  type        = string
}

variable "source_repository" {
  description = "Repository whose tags are mirrored"
  type        = string
  default     = "docker.io/library/nginx"
}

provider "imagesync" {
  # Plain HTTP for a local test registry; remove for registries with TLS.
  insecure_registries = startswith(var.registry, "127.0.0.1:") ? [var.registry] : []
}

data "imagesync_tags" "nginx" {
  repository = var.source_repository
  # The whole tag must match: 1.26.0, 1.27.3, ... (not 1.27, 1.27-alpine or mainline).
  include = "1\\.[0-9]+\\.[0-9]+"
  # Versions from 1.26 up to (not including) 2; pre-releases are left out.
  semver = ">=1.26, <2"
}

# The newest three releases, e.g. to show them.
data "imagesync_tags" "newest" {
  repository = var.source_repository
  semver     = "*"
  latest     = 3
}

resource "imagesync" "nginx" {
  for_each    = toset(data.imagesync_tags.nginx.tags)
  source      = "${var.source_repository}:${each.key}"
  destination = "${var.registry}/mirror/nginx:${each.key}"
}

# What a tag points at, without copying it.
data "imagesync_image" "newest" {
  reference = "${var.source_repository}:${data.imagesync_tags.newest.tags[0]}"
}

output "mirrored" {
  description = "Mirrored images by tag, pinned by digest"
  value       = { for tag, r in imagesync.nginx : tag => r.id }
}

output "newest" {
  description = "The newest release at the source, its digest and its platforms"
  value = {
    tag       = data.imagesync_tags.newest.tags[0]
    id        = data.imagesync_image.newest.id
    platforms = data.imagesync_image.newest.platforms
  }
}

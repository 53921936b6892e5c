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

variable "registry_username" {
  type    = string
  default = ""
}

variable "registry_password" {
  type      = string
  default   = ""
  sensitive = true
}

provider "imagesync" {
  # Plain HTTP for a local test registry; remove for registries with TLS.
  insecure_registries = startswith(var.registry, "127.0.0.1:") ? [var.registry] : []

  dynamic "registry_auth" {
    for_each = var.registry_username == "" ? [] : [1]
    content {
      address  = var.registry
      username = var.registry_username
      password = var.registry_password
    }
  }
}

locals {
  images = {
    busybox = "docker.io/library/busybox:1.36"
    alpine  = "docker.io/library/alpine:3.20"
  }
}

resource "imagesync" "mirror" {
  for_each    = local.images
  source      = each.value
  destination = "${var.registry}/mirror/${each.key}:${split(":", each.value)[1]}"
}

output "images" {
  description = "Mirrored images, pinned by digest"
  value       = { for k, r in imagesync.mirror : k => r.id }
}

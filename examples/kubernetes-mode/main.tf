# Kubernetes mode: each imagesync resource is an ImageSync object (imagesync.dev/v1alpha1).
# The imagesync controller (charts/imagesync) copies the images with its own credentials
# and heals the destination between Terraform runs.

terraform {
  required_providers {
    imagesync = {
      source = "imagesync/imagesync"
    }
    kubernetes = {
      source = "hashicorp/kubernetes"
    }
  }
}

provider "imagesync" {
  kubernetes {
    config_path = "~/.kube/config"
    namespace   = "imagesync"
  }
}

provider "kubernetes" {
  config_path = "~/.kube/config"
}

resource "imagesync" "nginx" {
  source      = "docker.io/library/nginx:1.27"
  destination = "registry.example.com/mirror/nginx:1.27"

  timeouts {
    create = "10m"
    delete = "5m"
  }
}

resource "kubernetes_deployment" "web" {
  metadata {
    name = "web"
  }
  spec {
    replicas = 2
    selector {
      match_labels = { app = "web" }
    }
    template {
      metadata {
        labels = { app = "web" }
      }
      spec {
        container {
          name = "nginx"
          # registry.example.com/mirror/nginx@sha256:..., from the ImageSync status
          image = imagesync.nginx.id
        }
      }
    }
  }
}

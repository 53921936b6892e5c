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

provider "imagesync" {}

provider "kubernetes" {
  config_path = "~/.kube/config"
}

# Mirror the image into the cluster's registry...
resource "imagesync" "nginx" {
  source      = "docker.io/library/nginx:1.27"
  destination = "europe-docker.pkg.dev/my-project/mirror/nginx:1.27"
}

# ...and run exactly that image, pinned by digest. When the upstream tag moves, the next
# plan re-syncs the mirror and rolls the deployment to the new digest.
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
          name  = "nginx"
          image = imagesync.nginx.id
        }
      }
    }
  }
}

# Take over an image that was mirrored before (by hand, or by another tool):
#
#   terraform import imagesync.busybox docker.io/library/busybox:1.36,registry.example.com/mirror/busybox:1.36
#
# The refresh after the import fills `id` and `source_digest` from the destination. If the
# source tag has moved on since, the next plan shows a re-sync.
#
# Importing declares the tag as this resource's, so `terraform destroy` deletes it (its
# layers are kept: this resource did not upload them). Without the import, `apply` would
# find the image already there and *adopt* it: such a resource never deletes the tag.

terraform {
  required_providers {
    imagesync = {
      source = "imagesync/imagesync"
    }
  }
}

resource "imagesync" "busybox" {
  source      = "docker.io/library/busybox:1.36"
  destination = "registry.example.com/mirror/busybox:1.36"
}

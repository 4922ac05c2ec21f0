# dm on Google Cloud with every default: `make bundle`, then
#   terraform -chdir=terraform/examples/basic init
#   terraform -chdir=terraform/examples/basic apply -var project=MY_PROJECT

terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

module "dm" {
  source  = "../../modules/dm"
  project = var.project
  region  = var.region
  bundle  = "${path.module}/../../../build/functions.zip"
  writers = var.writers

  extra_audiences = var.extra_audiences
}

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
  api_invokers    = var.api_invokers

  http_workers              = var.http_workers
  http_max_attempts         = var.http_max_attempts
  cloud_run_jobs            = var.cloud_run_jobs
  swarming_host             = var.swarming_host
  swarming_pubsub_publisher = var.swarming_pubsub_publisher
}

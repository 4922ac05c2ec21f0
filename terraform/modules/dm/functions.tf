# The four functions, built by Cloud Build from the bundle (`make bundle`). The uploaded
# object is named by the bundle's SHA-256: new sources, new object, new revisions.

resource "google_storage_bucket" "source" {
  # checkov:skip=CKV_GCP_62:holds only the function bundles, written by terraform; no access log bucket
  project                     = var.project
  name                        = "${var.project}-${var.name_prefix}-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_object" "bundle" {
  bucket = google_storage_bucket.source.name
  name   = "functions-${filesha256(var.bundle)}.zip"
  source = var.bundle
}

resource "google_cloudfunctions2_function" "fn" {
  # checkov:skip=CKV_GCP_124:dm_api only (users and jobs call it from outside; run.invoker for named accounts); the other three are ALLOW_INTERNAL_ONLY
  for_each = local.functions
  project  = var.project
  location = var.region
  name     = each.value.name

  build_config {
    runtime         = var.python_runtime
    entry_point     = each.key
    service_account = google_service_account.builder.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.bundle.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.runtime.email
    timeout_seconds                  = each.value.timeout
    available_memory                 = "512Mi"
    available_cpu                    = "1"
    max_instance_request_concurrency = 4
    max_instance_count               = var.max_instances
    all_traffic_on_latest_revision   = true
    # Private by IAM: only the accounts granted run.invoker in iam.tf get through; and
    # all but dm_api internal-only (see local.functions).
    ingress_settings      = each.value.ingress
    environment_variables = local.environment

    secret_volumes {
      mount_path = local.secret_dir
      project_id = var.project
      secret     = google_secret_manager_secret.notify_key.secret_id

      versions {
        version = "latest"
        path    = local.secret_file
      }
    }
  }

  lifecycle {
    precondition {
      # The URLs in the environment (local.urls) exist only while this fits a DNS label.
      condition     = length("${each.value.name}-${data.google_project.this.number}") <= 63
      error_message = "${each.value.name}: too long for Cloud Run's deterministic URL (local.urls): shorten name_prefix."
    }
    precondition {
      condition     = length(setintersection(keys(local.user_distributor_configs), keys(local.distributor_configs))) == 0
      error_message = "distributor_config names a config that http_workers, cloud_run_jobs or swarming_host declare too."
    }
    precondition {
      condition     = (var.swarming_host == null) == (var.swarming_pubsub_publisher == null)
      error_message = "swarming_host and swarming_pubsub_publisher go together (Swarming publishes task ends to dm's topic)."
    }
  }

  depends_on = [
    time_sleep.iam_propagation,
    google_secret_manager_secret_version.notify_key,
  ]
}

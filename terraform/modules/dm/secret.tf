# The HMAC key of notification tokens (DM_NOTIFY_SECRET_FILE): generated here, readable by
# the runtime account only, mounted into every function as a file. Its value is in the
# terraform state: keep the state private (or add versions by hand and drop the version
# resource).

resource "random_password" "notify_key" {
  length  = 64
  special = false
}

resource "google_secret_manager_secret" "notify_key" {
  project   = var.project
  secret_id = "${var.name_prefix}-notify-key"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "notify_key" {
  secret      = google_secret_manager_secret.notify_key.id
  secret_data = random_password.notify_key.result
}

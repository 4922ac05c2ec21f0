# Distributor notifications: a topic, pushed to dm_notify with an OIDC token signed as the
# push account. A push that dm_notify does not acknowledge is retried with backoff and,
# after notify_max_delivery_attempts, moved to the dead-letter topic (kept 7 days on its
# subscription for inspection).

resource "google_pubsub_topic" "notify" {
  # checkov:skip=CKV_GCP_83:Google-managed encryption; notifications carry ids and a status, no user data
  project                    = var.project
  name                       = "${var.name_prefix}-distributor-notify"
  message_retention_duration = "86400s"
  depends_on                 = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  # checkov:skip=CKV_GCP_83:Google-managed encryption; notifications carry ids and a status, no user data
  project                    = var.project
  name                       = "${var.name_prefix}-distributor-notify-dead"
  message_retention_duration = "604800s"
  depends_on                 = [google_project_service.apis]
}

resource "google_pubsub_subscription" "notify_push" {
  project = var.project
  name    = "${var.name_prefix}-notify-push"
  topic   = google_pubsub_topic.notify.id

  # dm_notify's timeout fits inside it, so a slow answer is not pushed a second time.
  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    # The path names the topic: functions-framework turns it into the CloudEvent's source.
    push_endpoint = "${local.urls.dm_notify}/projects/${var.project}/topics/${google_pubsub_topic.notify.name}"

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.urls.dm_notify
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.notify_max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project
  name                       = "${var.name_prefix}-distributor-notify-dead"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

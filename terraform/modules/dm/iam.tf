# One service account per role, each with only what its role needs:
#   runtime  - the functions' identity: Firestore, the notify topic, the queues, the secret
#   invoker  - the identity Cloud Tasks and Cloud Scheduler sign their OIDC tokens as:
#              may invoke dm_tasks and dm_sweep, nothing else
#   push     - the identity of the Pub/Sub push to dm_notify: may invoke dm_notify only
#   builder  - Cloud Build's identity when it builds the functions from the bundle

resource "google_service_account" "runtime" {
  project      = var.project
  account_id   = "${var.name_prefix}-runtime"
  display_name = "dm functions (runtime)"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "invoker" {
  project      = var.project
  account_id   = "${var.name_prefix}-invoker"
  display_name = "dm: Cloud Tasks and Cloud Scheduler calling dm_tasks and dm_sweep"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "push" {
  project      = var.project
  account_id   = "${var.name_prefix}-push"
  display_name = "dm: Pub/Sub pushing notifications to dm_notify"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "builder" {
  project      = var.project
  account_id   = "${var.name_prefix}-builder"
  display_name = "dm: Cloud Build building the functions"
  depends_on   = [google_project_service.apis]
}

# -- runtime ---------------------------------------------------------------------------

resource "google_project_iam_member" "runtime_firestore" {
  project = var.project
  role    = "roles/datastore.user"
  member  = google_service_account.runtime.member
}

resource "google_pubsub_topic_iam_member" "runtime_publishes" {
  project = var.project
  topic   = google_pubsub_topic.notify.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.runtime.member
}

resource "google_cloud_tasks_queue_iam_member" "runtime_enqueues" {
  count    = var.tasks_queue_count
  project  = var.project
  location = var.region
  name     = google_cloud_tasks_queue.tasks[count.index].name
  role     = "roles/cloudtasks.enqueuer"
  member   = google_service_account.runtime.member
}

# Creating a task whose OIDC token is signed as the invoker is acting as the invoker.
resource "google_service_account_iam_member" "runtime_acts_as_invoker" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.runtime.member
}

resource "google_secret_manager_secret_iam_member" "runtime_reads_secret" {
  project   = var.project
  secret_id = google_secret_manager_secret.notify_key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime.member
}

# -- who may invoke which function (run.invoker on the function's Cloud Run service) ------

resource "google_cloud_run_service_iam_member" "invoker_runs_tasks" {
  project  = var.project
  location = var.region
  service  = google_cloudfunctions2_function.fn["dm_tasks"].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.invoker.member
}

resource "google_cloud_run_service_iam_member" "invoker_runs_sweep" {
  project  = var.project
  location = var.region
  service  = google_cloudfunctions2_function.fn["dm_sweep"].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.invoker.member
}

resource "google_cloud_run_service_iam_member" "push_runs_notify" {
  project  = var.project
  location = var.region
  service  = google_cloudfunctions2_function.fn["dm_notify"].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

# dm_api: the writers, readers and named invokers only (their ACLs are checked in dm again),
# and the remote distributors' workers and jobs (they call with their executions' tokens).
resource "google_cloud_run_service_iam_member" "api_callers" {
  for_each = toset(concat(
    var.writers, var.readers, var.api_invokers, [for a in local.job_accounts : "serviceAccount:${a}"]
  ))
  project  = var.project
  location = var.region
  service  = google_cloudfunctions2_function.fn["dm_api"].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# -- Google's service agents ---------------------------------------------------------------

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# Pub/Sub mints the push's OIDC token as the push account.
resource "google_service_account_iam_member" "pubsub_signs_as_push" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Dead-lettering: Pub/Sub moves an undeliverable message to the dead-letter topic.
resource "google_pubsub_topic_iam_member" "pubsub_dead_letters" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_forwards" {
  project      = var.project
  subscription = google_pubsub_subscription.notify_push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# -- builder ---------------------------------------------------------------------------------

# What Google documents for a build service account of Cloud Run functions (and grants in
# the provider's own "basic builder" example): build logs, the images in Artifact
# Registry, and the function source, which Cloud Functions copies into a bucket of its own
# (gcf-v2-sources-PROJECT_NUMBER-REGION) that exists only after the first deployment, so
# a grant on one bucket cannot name it in advance.
resource "google_project_iam_member" "builder" {
  for_each = toset(["roles/logging.logWriter", "roles/artifactregistry.writer", "roles/storage.objectAdmin"])
  project  = var.project
  role     = each.value
  member   = google_service_account.builder.member
}

# New grants take a while to reach every service; a build started at once may be refused.
resource "time_sleep" "iam_propagation" {
  create_duration = "60s"

  depends_on = [
    google_project_iam_member.builder,
    google_project_iam_member.runtime_firestore,
    google_secret_manager_secret_iam_member.runtime_reads_secret,
  ]
}

# dm on Google Cloud: four Cloud Functions (gen2) over Firestore, Pub/Sub, Cloud Tasks
# and Cloud Scheduler. Every function is private; each caller has its own service account.

data "google_project" "this" {
  project_id = var.project
}

locals {
  apis = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])

  # The four entry points of the bundle's main.py (build_config.entry_point is the key).
  # dm_tasks waits as long as Cloud Tasks does (its timeout >= the dispatch deadline);
  # dm_notify answers within the push subscription's ack deadline; dm_sweep within the
  # scheduler's attempt deadline.
  # Ingress: dm_api is called from outside (users, jobs); the other three only by Cloud
  # Tasks, Cloud Scheduler and the Pub/Sub push of this project, which Cloud Run counts as
  # internal traffic (docs: "Restrict network ingress for Cloud Run"), so they refuse the
  # internet at the network too, IAM aside.
  functions = {
    dm_api = {
      name    = "${var.name_prefix}-api"
      timeout = 120
      ingress = "ALLOW_ALL"
    }
    dm_notify = {
      name    = "${var.name_prefix}-notify"
      timeout = 300
      ingress = "ALLOW_INTERNAL_ONLY"
    }
    dm_tasks = {
      name    = "${var.name_prefix}-tasks"
      timeout = var.tasks_dispatch_deadline_s
      ingress = "ALLOW_INTERNAL_ONLY"
    }
    dm_sweep = {
      name    = "${var.name_prefix}-sweep"
      timeout = 300
      ingress = "ALLOW_INTERNAL_ONLY"
    }
  }

  # Cloud Run's deterministic URL of each function's service
  # (https://SERVICE-PROJECT_NUMBER.REGION.run.app): known before the functions exist, so
  # a function's environment can name every URL, its own included, without a cycle.
  # Cloud Run gives it only while "SERVICE-PROJECT_NUMBER" fits one DNS label (63
  # characters); name_prefix's limit keeps it far below, and the functions check it.
  urls = {
    for entry, fn in local.functions :
    entry => "https://${fn.name}-${data.google_project.this.number}.${var.region}.run.app"
  }

  secret_dir  = "/etc/dm-secret"
  secret_file = "notify-key"

  # What every function reads at start-up (dmcore/runtime/backend.py); the same for all
  # four, so any of them can run any engine step.
  environment = {
    DM_BACKEND                 = "gcp"
    GOOGLE_CLOUD_PROJECT       = var.project
    DM_FIRESTORE_DATABASE      = google_firestore_database.dm.name
    DM_TASKS_QUEUES            = join(",", [for q in google_cloud_tasks_queue.tasks : q.id])
    DM_TASKS_URL               = local.urls.dm_tasks
    DM_TASKS_SERVICE_ACCOUNT   = google_service_account.invoker.email
    DM_TASKS_DISPATCH_DEADLINE = tostring(var.tasks_dispatch_deadline_s)
    DM_RUN_RETRY_WINDOW_S      = tostring(var.run_retry_window_s)
    DM_JOBSIM_TASK_BODY        = var.jobsim_task_body
    DM_NOTIFY_TOPIC            = google_pubsub_topic.notify.id
    DM_NOTIFY_SECRET_FILE      = "${local.secret_dir}/${local.secret_file}"
    DM_CONFIG                  = local.dm_config
    DM_HOST                    = local.urls.dm_api
    DM_AUTH                    = "oidc"
    DM_OIDC_AUDIENCE           = join(",", concat(values(local.urls), var.extra_audiences))
    DM_INVOKER_SERVICE_ACCOUNT = google_service_account.invoker.email
    DM_PUSH_SERVICE_ACCOUNT    = google_service_account.push.email
    DM_WRITERS                 = join(",", var.writers)
    DM_READERS                 = join(",", var.readers)
  }
}

resource "google_project_service" "apis" {
  for_each           = local.apis
  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

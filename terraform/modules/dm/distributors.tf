# The remote distributors (README: "Remote distributors"), each only when its variables say
# so, with exactly the grants it needs, and its configs added to dm's (DM_CONFIG):
#
#   http            a queue of its own for the work orders; dm (runtime) enqueues, reads and
#                   deletes tasks there, and acts as the worker invoker, the identity Cloud
#                   Tasks signs the orders as, which may invoke each worker service and
#                   nothing else
#   cloud_run_jobs  dm may run (with overrides), read and cancel executions of the named
#                   jobs: roles/run.developer on each of them, none project-wide. RunJob's
#                   overrides cannot change the job's identity, so dm need not act as it
#                   (Cloud Run asks that only of who creates or updates a job)
#   swarming_v1     Swarming's account may publish task ends to dm's topic
#
# The workers' and jobs' own accounts report through dm's topic and call dm_api with their
# executions' tokens: they may publish to the topic and invoke dm_api (iam.tf).

locals {
  http_enabled = length(var.http_workers) > 0

  http_worker_urls = {
    for name, w in var.http_workers :
    name => coalesce(w.url, "https://${w.service}-${data.google_project.this.number}.${coalesce(w.region, var.region)}.run.app")
  }

  # One run.invoker grant per worker service, however many configs name it.
  http_worker_services = {
    for s in distinct([for w in values(var.http_workers) : "${coalesce(w.region, var.region)}/${w.service}"]) :
    s => { region = split("/", s)[0], service = split("/", s)[1] }
  }

  cloud_run_jobs = {
    for j in var.cloud_run_jobs :
    j.job => { project = split("/", j.job)[1], location = split("/", j.job)[3], name = split("/", j.job)[5] }
  }

  # Accounts of the workers and jobs: they report to the topic and call dm_api.
  job_accounts = distinct(concat(
    [for w in values(var.http_workers) : w.service_account],
    [for j in var.cloud_run_jobs : j.service_account],
  ))

  distributor_configs = merge(
    {
      for name, w in var.http_workers : name => {
        http = {
          url                   = local.http_worker_urls[name]
          audience              = coalesce(w.audience, local.http_worker_urls[name])
          service_account_email = google_service_account.worker_invoker[0].email
          queue                 = google_cloud_tasks_queue.http[0].id
          max_attempts          = var.http_max_attempts
        }
      }
    },
    {
      for name, jobs in { cloud_run_jobs = [for j in var.cloud_run_jobs : j.job] } :
      name => { cloud_run_jobs = { jobs = jobs } } if length(jobs) > 0
    },
    {
      for name, host in { swarming = var.swarming_host } :
      name => { swarming_v1 = { swarming = { url = host } } } if host != null
    },
  )

  # DM_CONFIG: the configs of var.distributor_config, and those declared above.
  user_distributor_configs = jsondecode(var.distributor_config).distributor_configs
  dm_config                = jsonencode({ distributor_configs = merge(local.user_distributor_configs, local.distributor_configs) })
}

# -- http -----------------------------------------------------------------------------------------

resource "google_cloud_tasks_queue" "http" {
  count    = local.http_enabled ? 1 : 0
  project  = var.project
  location = var.region
  name     = "${var.name_prefix}-http"

  rate_limits {
    max_dispatches_per_second = var.tasks_max_dispatches_per_second
    max_concurrent_dispatches = var.tasks_max_concurrent_dispatches
  }

  # The http distributor counts deliveries itself: after http_max_attempts, CRASHED.
  retry_config {
    max_attempts  = var.http_max_attempts
    min_backoff   = "10s"
    max_backoff   = "300s"
    max_doublings = 4
  }

  stackdriver_logging_config {
    sampling_ratio = 0.1
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_tasks_queue_iam_member" "runtime_http" {
  # create (run), get (status), delete (cancel) the work orders
  for_each = toset(local.http_enabled ? ["roles/cloudtasks.enqueuer", "roles/cloudtasks.viewer", "roles/cloudtasks.taskDeleter"] : [])
  project  = var.project
  location = var.region
  name     = google_cloud_tasks_queue.http[0].name
  role     = each.value
  member   = google_service_account.runtime.member
}

resource "google_service_account" "worker_invoker" {
  count        = local.http_enabled ? 1 : 0
  project      = var.project
  account_id   = "${var.name_prefix}-worker-invoker"
  display_name = "dm: Cloud Tasks calling the http distributor's workers"
  depends_on   = [google_project_service.apis]
}

# Creating a task whose OIDC token is signed as the worker invoker is acting as it.
resource "google_service_account_iam_member" "runtime_acts_as_worker_invoker" {
  count              = local.http_enabled ? 1 : 0
  service_account_id = google_service_account.worker_invoker[0].name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.runtime.member
}

resource "google_cloud_run_v2_service_iam_member" "worker_invoker_runs_worker" {
  for_each = local.http_worker_services
  project  = var.project
  location = each.value.region
  name     = each.value.service
  role     = "roles/run.invoker"
  member   = google_service_account.worker_invoker[0].member
}

# -- cloud_run_jobs -------------------------------------------------------------------------------

resource "google_cloud_run_v2_job_iam_member" "runtime_runs_job" {
  for_each = local.cloud_run_jobs
  project  = each.value.project
  location = each.value.location
  name     = each.value.name
  role     = "roles/run.developer"
  member   = google_service_account.runtime.member
}

# -- who reports to dm's topic ----------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "job_reports" {
  for_each = toset(local.job_accounts)
  project  = var.project
  topic    = google_pubsub_topic.notify.name
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${each.value}"
}

resource "google_pubsub_topic_iam_member" "swarming_publishes" {
  count   = var.swarming_pubsub_publisher == null ? 0 : 1
  project = var.project
  topic   = google_pubsub_topic.notify.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${var.swarming_pubsub_publisher}"
}

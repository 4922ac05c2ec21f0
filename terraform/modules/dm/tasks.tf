# The engine's follow-up steps: tasks POSTed to dm_tasks with an OIDC token signed as the
# invoker. Several queues (tasks_queue_count) when one queue's 500 dispatches/s are not
# enough: dm spreads tasks over them by a stable key (DM_TASKS_QUEUES). Retries are
# bounded; what is dropped after the last attempt is found again by the sweep.

resource "google_cloud_tasks_queue" "tasks" {
  count    = var.tasks_queue_count
  project  = var.project
  location = var.region
  name     = "${var.name_prefix}-tasks-${count.index}"

  rate_limits {
    max_dispatches_per_second = var.tasks_max_dispatches_per_second
    max_concurrent_dispatches = var.tasks_max_concurrent_dispatches
  }

  retry_config {
    max_attempts  = var.tasks_max_attempts
    min_backoff   = "1s"
    max_backoff   = "300s"
    max_doublings = 8
  }

  stackdriver_logging_config {
    sampling_ratio = 0.01
  }

  depends_on = [google_project_service.apis]
}

# Cloud Scheduler's tick: POST dm_sweep (re-dispatch what was left behind, fire due
# timers, poll overdue executions), with an OIDC token signed as the invoker.

resource "google_cloud_scheduler_job" "sweep" {
  project          = var.project
  region           = var.region
  name             = "${var.name_prefix}-sweep"
  schedule         = var.sweep_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "${local.functions.dm_sweep.timeout}s"

  # A missed tick is made good by the next one.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "${local.urls.dm_sweep}/"

    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = local.urls.dm_sweep
    }
  }

  depends_on = [google_cloud_run_service_iam_member.invoker_runs_sweep]
}

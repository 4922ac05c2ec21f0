output "api_url" {
  description = "dm_api's URL: POST $api_url/prpc/dm.Deps/<Method> with an identity token."
  value       = local.urls.dm_api
}

output "function_urls" {
  description = "Every function's URL, by entry point."
  value       = local.urls
}

output "notify_topic" {
  description = "The distributor notification topic (DM_NOTIFY_TOPIC)."
  value       = google_pubsub_topic.notify.id
}

output "tasks_queues" {
  description = "The Cloud Tasks queues (DM_TASKS_QUEUES)."
  value       = [for q in google_cloud_tasks_queue.tasks : q.id]
}

output "service_accounts" {
  description = "The service account of each role."
  value = {
    runtime = google_service_account.runtime.email
    invoker = google_service_account.invoker.email
    push    = google_service_account.push.email
    builder = google_service_account.builder.email
    # the identity Cloud Tasks signs the http distributor's work orders as (null: no workers)
    worker_invoker = local.http_enabled ? google_service_account.worker_invoker[0].email : null
  }
}

output "http_queue" {
  description = "The Cloud Tasks queue of the http distributor's work orders (null: no workers)."
  value       = local.http_enabled ? google_cloud_tasks_queue.http[0].id : null
}

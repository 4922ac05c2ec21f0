output "api_url" {
  description = "dm_api's URL."
  value       = module.dm.api_url
}

output "notify_topic" {
  description = "The distributor notification topic."
  value       = module.dm.notify_topic
}

output "tasks_queues" {
  description = "The Cloud Tasks queues."
  value       = module.dm.tasks_queues
}

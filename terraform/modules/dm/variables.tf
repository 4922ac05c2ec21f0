variable "project" {
  description = "Google Cloud project id to deploy dm into."
  type        = string
}

variable "region" {
  description = "Region of the functions, queues and scheduler job (e.g. europe-west1)."
  type        = string
}

variable "bundle" {
  description = "Path of the functions bundle built by `make bundle` (build/functions.zip)."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of every resource name (several dm deployments may share a project)."
  type        = string
  default     = "dm"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,14}$", var.name_prefix))
    error_message = "name_prefix: 1-15 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "python_runtime" {
  description = "Cloud Functions runtime of the bundle."
  type        = string
  default     = "python312"
}

variable "firestore_location" {
  description = "Firestore location (a region such as europe-west1, or nam5/eur3); null: var.region."
  type        = string
  default     = null
}

variable "firestore_database" {
  description = "Firestore database id."
  type        = string
  default     = "(default)"
}

variable "firestore_deletion_protection" {
  description = "Refuse to delete the Firestore database (turn off only to tear a test deployment down)."
  type        = bool
  default     = true
}

variable "distributor_config" {
  description = "dm's distributor configs (DM_CONFIG), a JSON document: jobsim (simulated jobs) by default."
  type        = string
  default     = "{\"distributor_configs\": {\"jobsim\": {\"jobsim\": {\"pool\": \"dm\"}}}}"
}

variable "writers" {
  description = "Principals who may create and cancel through dm_api (user:... or serviceAccount:...)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.writers : !contains(["allUsers", "allAuthenticatedUsers"], m)])
    error_message = "dm_api stays private: allUsers and allAuthenticatedUsers are refused."
  }
}

variable "readers" {
  description = "Principals who may read the graph through dm_api."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.readers : !contains(["allUsers", "allAuthenticatedUsers"], m)])
    error_message = "dm_api stays private: allUsers and allAuthenticatedUsers are refused."
  }
}

variable "api_invokers" {
  description = "Further principals that may reach dm_api (e.g. jobs calling with execution tokens)."
  type        = list(string)
  default     = []

  validation {
    condition = alltrue([
      for m in var.api_invokers : !contains(["allUsers", "allAuthenticatedUsers"], m)
    ])
    error_message = "dm_api stays private: allUsers and allAuthenticatedUsers are refused."
  }
}

variable "extra_audiences" {
  description = "Further OIDC audiences dm accepts besides the functions' URLs, e.g. gcloud's client id 32555940559.apps.googleusercontent.com for `gcloud auth print-identity-token` of a user."
  type        = list(string)
  default     = []
}

variable "tasks_queue_count" {
  description = "How many Cloud Tasks queues the tasks are sharded over (one dispatches <= 500 tasks/s). 8: 4,000 dispatches/s, 1,000 executions/s at 3 deliveries each with a third to spare (README: Scale)."
  type        = number
  default     = 8

  validation {
    condition     = var.tasks_queue_count >= 1 && var.tasks_queue_count <= 64
    error_message = "tasks_queue_count: 1 to 64."
  }
}

variable "tasks_dispatch_deadline_s" {
  description = "Seconds Cloud Tasks waits for dm_tasks (15-1800); dm_tasks' timeout is set to match."
  type        = number
  default     = 600

  validation {
    condition     = var.tasks_dispatch_deadline_s >= 15 && var.tasks_dispatch_deadline_s <= 1800
    error_message = "tasks_dispatch_deadline_s: 15 to 1800 seconds (Cloud Tasks' bounds)."
  }
}

variable "run_retry_window_s" {
  description = "Seconds a distributor's transient run errors are retried, from the first try, before the execution is REJECTED (docs/behaviour.md)."
  type        = number
  default     = 3600

  validation {
    condition     = var.run_retry_window_s > 0
    error_message = "run_retry_window_s: more than 0 seconds."
  }
}

variable "jobsim_task_body" {
  description = "DM_JOBSIM_TASK_BODY: \"id\" (every dm reads it) or \"job\" (the job in the body, one read less; read only by dm from commit 8193f07: set it once no older dm takes the tasks, docs/behaviour.md)."
  type        = string
  default     = "id"

  validation {
    condition     = contains(["id", "job"], var.jobsim_task_body)
    error_message = "jobsim_task_body: \"id\" or \"job\"."
  }
}

variable "tasks_max_dispatches_per_second" {
  description = "Rate limit of each Cloud Tasks queue (Cloud Tasks caps it at 500)."
  type        = number
  default     = 500
}

variable "tasks_max_concurrent_dispatches" {
  description = "Tasks each queue may have in flight at once."
  type        = number
  default     = 1000
}

variable "tasks_max_attempts" {
  description = "Deliveries of one task before Cloud Tasks drops it (the sweep re-dispatches lost work)."
  type        = number
  default     = 100

  validation {
    condition     = var.tasks_max_attempts >= 1
    error_message = "tasks_max_attempts: bounded retries, at least 1 (-1, unlimited, is refused)."
  }
}

variable "sweep_schedule" {
  description = "Cloud Scheduler schedule of dm_sweep (cron; once a minute is Scheduler's finest)."
  type        = string
  default     = "* * * * *"
}

variable "notify_max_delivery_attempts" {
  description = "Pushes of one notification before it goes to the dead-letter topic (5-100)."
  type        = number
  default     = 20
}

variable "max_instances" {
  description = "Most instances of each function."
  type        = number
  default     = 100
}

# -- remote distributors (README: "Remote distributors"); nothing is created when unset ----------

variable "http_workers" {
  description = <<-EOT
    Workers of the `http` distributor, by distributor config name. Each is a Cloud Run
    service in var.project: `service` (its name), `service_account` (the email it runs as:
    it may then publish its reports to dm's topic and call dm_api), and optionally `region`
    (default var.region), `url` (default Cloud Run's deterministic URL of the service) and
    `audience` (of the tokens Cloud Tasks sends it; default the url).
  EOT
  type = map(object({
    service         = string
    service_account = string
    region          = optional(string)
    url             = optional(string)
    audience        = optional(string)
  }))
  default = {}

  validation {
    condition = alltrue([
      for w in values(var.http_workers) :
      can(regex("^[a-z]([-a-z0-9]*[a-z0-9])?$", w.service)) && can(regex("^[^@:/]+@[^@:/]+$", w.service_account))
    ])
    error_message = "http_workers: service is a Cloud Run service name; service_account an email (no \"serviceAccount:\" prefix)."
  }
}

variable "http_max_attempts" {
  description = "Deliveries of an http work order before the execution is CRASHED: the http queue's max_attempts and each config's."
  type        = number
  default     = 3

  validation {
    condition     = var.http_max_attempts >= 1 && var.http_max_attempts <= 100
    error_message = "http_max_attempts: 1 to 100."
  }
}

variable "cloud_run_jobs" {
  description = <<-EOT
    Cloud Run Jobs the `cloud_run_jobs` distributor (config name "cloud_run_jobs") may run:
    `job` (projects/P/locations/L/jobs/J) and `service_account` (the email the job runs as:
    it may then publish its reports to dm's topic and call dm_api). dm may run, read and
    cancel these jobs' executions, no others.
  EOT
  type = list(object({
    job             = string
    service_account = string
  }))
  default = []

  validation {
    condition = alltrue([
      for j in var.cloud_run_jobs :
      can(regex("^projects/[^/]+/locations/[^/]+/jobs/[^/]+$", j.job)) && can(regex("^[^@:/]+@[^@:/]+$", j.service_account))
    ])
    error_message = "cloud_run_jobs: job is projects/P/locations/L/jobs/J; service_account an email (no \"serviceAccount:\" prefix)."
  }

  validation {
    condition     = length(distinct([for j in var.cloud_run_jobs : j.job])) == length(var.cloud_run_jobs)
    error_message = "cloud_run_jobs: a job is listed twice."
  }
}

variable "swarming_host" {
  description = "The Swarming server of the `swarming_v1` distributor (config name \"swarming\"), as scheme://host, e.g. https://chromium-swarm.appspot.com; null: none."
  type        = string
  default     = null

  validation {
    condition     = var.swarming_host == null || can(regex("^https?://[a-z0-9.-]+(:[0-9]+)?$", var.swarming_host))
    error_message = "swarming_host: scheme://host, lower-case, nothing after the host."
  }
}

variable "swarming_pubsub_publisher" {
  description = "The service account (email) Swarming publishes task ends as: it may publish to dm's notification topic. Required with swarming_host."
  type        = string
  default     = null

  validation {
    condition     = var.swarming_pubsub_publisher == null || can(regex("^[^@:/]+@[^@:/]+$", var.swarming_pubsub_publisher))
    error_message = "swarming_pubsub_publisher: an email (no \"serviceAccount:\" prefix)."
  }
}

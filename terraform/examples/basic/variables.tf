variable "project" {
  description = "Google Cloud project id to deploy dm into."
  type        = string
}

variable "region" {
  description = "Region of dm's functions, queues and database."
  type        = string
  default     = "europe-west1"
}

variable "writers" {
  description = "Who may call dm_api (e.g. [\"user:you@example.com\"]); empty: nobody yet."
  type        = list(string)
  default     = []
}

variable "extra_audiences" {
  description = "Further OIDC audiences (see the module); [\"32555940559.apps.googleusercontent.com\"] lets users call with `gcloud auth print-identity-token`."
  type        = list(string)
  default     = []
}

# The remote distributors (see the module; example-distributors.tfvars): none by default.

variable "http_workers" {
  description = "Workers of the http distributor, by config name (see the module)."
  type = map(object({
    service         = string
    service_account = string
    region          = optional(string)
    url             = optional(string)
    audience        = optional(string)
  }))
  default = {}
}

variable "http_max_attempts" {
  description = "Deliveries of an http work order before the execution is CRASHED."
  type        = number
  default     = 3
}

variable "cloud_run_jobs" {
  description = "Cloud Run Jobs the cloud_run_jobs distributor may run (see the module)."
  type = list(object({
    job             = string
    service_account = string
  }))
  default = []
}

variable "swarming_host" {
  description = "The Swarming server of the swarming_v1 distributor (scheme://host); null: none."
  type        = string
  default     = null
}

variable "swarming_pubsub_publisher" {
  description = "The service account (email) Swarming publishes task ends as."
  type        = string
  default     = null
}

variable "api_invokers" {
  description = "Further principals that may reach dm_api, e.g. Swarming bots' accounts (\"serviceAccount:...\")."
  type        = list(string)
  default     = []
}

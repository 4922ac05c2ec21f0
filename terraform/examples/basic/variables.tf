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

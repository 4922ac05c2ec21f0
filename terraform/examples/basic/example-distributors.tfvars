# The remote distributors, declared for `apply -var-file=example-distributors.tfvars`
# (replace the names; each block is optional). terraform grants what each needs and adds
# their configs to dm's DM_CONFIG: "render" (http), "cloud_run_jobs", "swarming".

# http: a worker on Cloud Run (examples/http/worker.py), deployed in the same project
# as `gcloud run deploy render-worker --no-allow-unauthenticated --service-account ...`.
http_workers = {
  render = {
    service         = "render-worker"
    service_account = "render-worker@MY_PROJECT.iam.gserviceaccount.com"
  }
}
http_max_attempts = 3

# cloud_run_jobs: jobs that run Job.from_env() (examples/cloud_run_jobs/job.py).
cloud_run_jobs = [
  {
    job             = "projects/MY_PROJECT/locations/europe-west1/jobs/wordcount"
    service_account = "wordcount-job@MY_PROJECT.iam.gserviceaccount.com"
  },
]

# swarming_v1: the Swarming server, the account it publishes task ends as (its App
# Engine one for an appspot.com server) and, to call dm_api from a task, the bots' account.
swarming_host             = "https://chromium-swarm.appspot.com"
swarming_pubsub_publisher = "chromium-swarm@appspot.gserviceaccount.com"
api_invokers              = ["serviceAccount:bots@MY_SWARMING_PROJECT.iam.gserviceaccount.com"]

# dm's store: a Firestore database in native mode.
#
# Indexes follow the queries the engine runs (tests/test_terraform_firestore.py records
# every query shape on the emulator and checks each is served here): equality filters
# are served by Firestore's automatic single-field indexes (merged), and ordering by one
# field by its single-field index, so dm needs no composite index today. Large fields that
# no query touches (descriptions, results, distributor state, queued task payloads) are
# exempted from indexing: an index entry is written for every indexed value, and values
# over 1,500 bytes cannot be indexed whole anyway. So are timestamps no query orders by.

resource "google_firestore_database" "dm" {
  project                           = var.project
  name                              = var.firestore_database
  location_id                       = coalesce(var.firestore_location, var.region)
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.firestore_deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = var.firestore_deletion_protection ? "ABANDON" : "DELETE"
  depends_on                        = [google_project_service.apis]
}

locals {
  # Large values no query looks at: collection id => fields exempted from indexing.
  unindexed_fields = {
    "quests/desc"       = { collection = "quests", field = "desc" }       # the quest's description (its parameters)
    "attempts/ex"       = { collection = "attempts", field = "ex" }       # the current execution (config, result)
    "attempts/result"   = { collection = "attempts", field = "result" }   # a small result, inline (up to 32 KiB)
    "results/object"    = { collection = "results", field = "object" }    # a larger result, up to 256 KiB
    "executions/result" = { collection = "executions", field = "result" } # the distributor's result (the job's state)
    "outbox/tasks"      = { collection = "outbox", field = "tasks" }      # follow-up tasks waiting for dispatch
    # Timestamps no query looks at, in top-level collections written about once per
    # execution or more: indexed, their ever-growing values would cap each collection near
    # Firestore's 500 writes/s for sequentially indexed fields (README: Scale).
    "quests/created"    = { collection = "quests", field = "created" }
    "attempts/created"  = { collection = "attempts", field = "created" }
    "attempts/modified" = { collection = "attempts", field = "modified" }
  }
}

resource "google_firestore_field" "unindexed" {
  for_each   = local.unindexed_fields
  project    = var.project
  database   = google_firestore_database.dm.name
  collection = each.value.collection
  field      = each.value.field

  # An empty index_config removes every single-field index of the field.
  index_config {}
}

# dm's store: a Firestore database in native mode.
#
# Indexes follow the queries the engine runs (tests/test_terraform_firestore.py records
# every query shape on the emulator and checks each is served here): equality filters
# are served by Firestore's automatic single-field indexes (merged), and ordering by one
# field by its single-field index. The sweep's time-ordered keys on attempts are sharded
# (README: Scale): each shard's due attempts by a composite index (sweep_shard, due
# time), and the single-field indexes of both fields are removed, so no index takes its
# collection's writes in time order. Large fields that no query touches (descriptions,
# results, distributor state, queued task payloads) are exempted from indexing: an index
# entry is written for every indexed value, and values over 1,500 bytes cannot be indexed
# whole anyway. So are timestamps no query orders by.

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
    "attempts/pending"  = { collection = "attempts", field = "pending" }  # follow-ups committed with a step
    # The sweep's keys: read only through the composite indexes below (sweep_shard first).
    "attempts/sweep_shard"    = { collection = "attempts", field = "sweep_shard" }
    "attempts/timer_due_us"   = { collection = "attempts", field = "timer_due_us" }
    "attempts/poll_due_us"    = { collection = "attempts", field = "poll_due_us" }
    "attempts/expiry_due_us"  = { collection = "attempts", field = "expiry_due_us" }
    "attempts/pending_due_us" = { collection = "attempts", field = "pending_due_us" }
    "outbox/sweep_shard"      = { collection = "outbox", field = "sweep_shard" }
    "outbox/created_us"       = { collection = "outbox", field = "created_us" }
    # Timestamps no query looks at, in top-level collections written about once per
    # execution or more: indexed, their ever-growing values would cap each collection near
    # Firestore's 500 writes/s for sequentially indexed fields (README: Scale).
    "quests/created"    = { collection = "quests", field = "created" }
    "attempts/created"  = { collection = "attempts", field = "created" }
    "attempts/modified" = { collection = "attempts", field = "modified" }
    # (a copy of its quest's created, on every attempt: grows as quests are made)
    "attempts/quest_created" = { collection = "attempts", field = "quest_created" }
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

# The sweep asks each shard for its due attempts, earliest first: one composite index per
# due field, led by the shard, so new entries land in 16 ranges (one per shard), not at
# the end of one.
resource "google_firestore_index" "sweep" {
  for_each = {
    "attempts/timer_due_us"   = { collection = "attempts", field = "timer_due_us" }
    "attempts/poll_due_us"    = { collection = "attempts", field = "poll_due_us" }
    "attempts/expiry_due_us"  = { collection = "attempts", field = "expiry_due_us" }
    "attempts/pending_due_us" = { collection = "attempts", field = "pending_due_us" }
    "outbox/created_us"       = { collection = "outbox", field = "created_us" }
  }
  project    = var.project
  database   = google_firestore_database.dm.name
  collection = each.value.collection

  fields {
    field_path = "sweep_shard"
    order      = "ASCENDING"
  }
  fields {
    field_path = each.value.field
    order      = "ASCENDING"
  }
}

# ingest-job as a Cloud Run job, its service account (Secret Manager access on the prefix only),
# and the identity the admission Lambda in AWS uses to run it: a workload identity pool with an
# AWS provider that trusts only the admission's IAM role, allowed to act as a launcher service
# account that may run this one job.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  role_name    = reverse(split("/", var.admission_role_arn))[0]
  assumed_role = "arn:aws:sts::${var.aws_account_id}:assumed-role/${local.role_name}"

  # The job's environment. Names must be ones the code reads: tests/tests/deploy_templates.rs
  # feeds these maps to the real configuration loaders.
  job_env = {
    DATAHUB_GMS_URL                    = var.datahub_base_url
    DATAHUB_EXECUTOR_GCP_SM_ENABLED    = "true"
    DATAHUB_EXECUTOR_GCP_SM_PROJECT_ID = var.project_id
    DATAHUB_EXECUTOR_GCP_SM_PREFIX     = var.secrets_manager_prefix
    DATAHUB_EXECUTOR_LOG_FORMAT        = "json"
  }
  job_secrets = merge(var.optional_secrets, { DATAHUB_GMS_TOKEN = var.gms_token_secret_id })

  # What the admission Lambda needs to launch this job (add it to the function's environment;
  # the credential file is the credential_config_json output, shipped with the function).
  admission_env = {
    DATAHUB_EXECUTOR_LAUNCHER            = "cloud-run"
    DATAHUB_EXECUTOR_CLOUD_RUN_PROJECT   = var.project_id
    DATAHUB_EXECUTOR_CLOUD_RUN_REGION    = var.region
    DATAHUB_EXECUTOR_CLOUD_RUN_JOB       = google_cloud_run_v2_job.ingest.name
    DATAHUB_EXECUTOR_CLOUD_RUN_CONTAINER = "ingest-job"
    GOOGLE_APPLICATION_CREDENTIALS       = "/var/task/gcp-credentials.json"
  }
}

# ------------------------------------------------------------------ the job and its identity
resource "google_service_account" "job" {
  project      = var.project_id
  account_id   = "${var.name}-job"
  display_name = "DataHub ingest-job (${var.name})"
}

# Source secrets: only those whose id starts with the prefix.
resource "google_project_iam_member" "job_source_secrets" {
  project = var.project_id
  role    = "roles/secretmanager.secretAccessor"
  member  = "serviceAccount:${google_service_account.job.email}"
  condition {
    title       = "${var.name}-secret-prefix"
    description = "Secrets named ${var.secrets_manager_prefix}* only"
    expression  = "resource.name.startsWith(\"projects/${data.google_project.this.number}/secrets/${var.secrets_manager_prefix}\")"
  }
}

# The token and the optional secrets injected into the environment.
resource "google_secret_manager_secret_iam_member" "job_injected" {
  for_each  = toset(values(local.job_secrets))
  project   = var.project_id
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.job.email}"
}

resource "google_cloud_run_v2_job" "ingest" {
  project  = var.project_id
  name     = "${var.name}-ingest-job"
  location = var.region
  labels   = var.labels
  template {
    labels = var.labels
    template {
      service_account = google_service_account.job.email
      timeout         = "${var.task_timeout}s"
      # A failed run is reported FAILURE to DataHub; running it again would ingest twice.
      max_retries = 0
      dynamic "vpc_access" {
        for_each = compact([var.vpc_connector])
        content {
          connector = vpc_access.value
          egress    = "ALL_TRAFFIC"
        }
      }
      containers {
        name  = "ingest-job"
        image = "${var.image_uri}:${var.image_tag}"
        args  = ["job"]
        resources {
          limits = {
            cpu    = tostring(var.task_cpu)
            memory = "${var.task_memory}Mi"
          }
        }
        dynamic "env" {
          for_each = merge(var.optional_env_vars, local.job_env)
          content {
            name  = env.key
            value = env.value
          }
        }
        dynamic "env" {
          for_each = local.job_secrets
          content {
            name = env.key
            value_source {
              secret_key_ref {
                secret  = env.value
                version = "latest"
              }
            }
          }
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.job_injected]
}

# ------------------------------------------------------------------ the admission's identity
resource "google_iam_workload_identity_pool" "aws" {
  project                   = var.project_id
  workload_identity_pool_id = "${var.name}-aws"
  display_name              = "${var.name} admission (AWS)"
  description               = "The admission Lambda of the DataHub executor, running in AWS account ${var.aws_account_id}"
}

resource "google_iam_workload_identity_pool_provider" "aws" {
  #checkov:skip=CKV_GCP_125:A GitHub Actions OIDC check; this is an AWS provider, held to the admission role by attribute_condition
  project                            = var.project_id
  workload_identity_pool_id          = google_iam_workload_identity_pool.aws.workload_identity_pool_id
  workload_identity_pool_provider_id = "aws"
  display_name                       = "AWS ${var.aws_account_id}"
  aws {
    account_id = var.aws_account_id
  }
  attribute_mapping = {
    "google.subject"     = "assertion.arn"
    "attribute.aws_role" = "assertion.arn.contains('assumed-role') ? assertion.arn.extract('{account_arn}assumed-role/') + 'assumed-role/' + assertion.arn.extract('assumed-role/{role_name}/') : assertion.arn"
  }
  # Only the admission's role may exchange tokens here.
  attribute_condition = "attribute.aws_role == \"${local.assumed_role}\""
}

resource "google_service_account" "launcher" {
  project      = var.project_id
  account_id   = "${var.name}-launcher"
  display_name = "DataHub executor admission (${var.name}): runs the ingest-job Cloud Run job"
}

resource "google_service_account_iam_member" "launcher_federation" {
  service_account_id = google_service_account.launcher.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool.aws.name}/attribute.aws_role/${local.assumed_role}"
}

# Run this job (with the JOB_SPEC override), list and cancel its executions: nothing else.
resource "google_cloud_run_v2_job_iam_member" "launcher" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_job.ingest.name
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.launcher.email}"
}

# Running a job with overrides acts as the job's service account.
resource "google_service_account_iam_member" "launcher_act_as_job" {
  service_account_id = google_service_account.job.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.launcher.email}"
}

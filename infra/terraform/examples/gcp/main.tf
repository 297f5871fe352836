# Example root module: ingest-job as a Cloud Run job, launched by the admission Lambda of an AWS
# deployment (examples/aws) through workload identity federation.

provider "google" {
  project = var.project_id
  region  = var.region
}

module "cloud_run_job" {
  source = "../../modules/gcp"

  name                   = var.name
  project_id             = var.project_id
  region                 = var.region
  datahub_base_url       = var.datahub_base_url
  gms_token_secret_id    = var.gms_token_secret_id
  image_uri              = var.image_uri
  image_tag              = var.image_tag
  task_cpu               = var.task_cpu
  task_memory            = var.task_memory
  secrets_manager_prefix = var.secrets_manager_prefix
  aws_account_id         = var.aws_account_id
  admission_role_arn     = var.admission_role_arn
}

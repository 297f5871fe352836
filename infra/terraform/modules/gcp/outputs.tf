output "job_name" {
  description = "The Cloud Run job (DATAHUB_EXECUTOR_CLOUD_RUN_JOB)."
  value       = google_cloud_run_v2_job.ingest.name
}

output "job_service_account" {
  value = google_service_account.job.email
}

output "launcher_service_account" {
  value = google_service_account.launcher.email
}

output "workload_identity_provider" {
  value = google_iam_workload_identity_pool_provider.aws.name
}

output "credential_config_json" {
  description = "GOOGLE_APPLICATION_CREDENTIALS content for the admission Lambda (external_account, AWS; holds no secret)."
  value = jsonencode({
    type                              = "external_account"
    audience                          = "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.aws.name}"
    subject_token_type                = "urn:ietf:params:aws:token-type:aws4_request"
    token_url                         = "https://sts.googleapis.com/v1/token"
    service_account_impersonation_url = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/${google_service_account.launcher.email}:generateAccessToken"
    credential_source = {
      environment_id                 = "aws1"
      regional_cred_verification_url = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
    }
  })
}

output "admission_environment" {
  description = "Environment variables the admission Lambda needs to launch this job."
  value       = local.admission_env
}

output "job_name" {
  value = module.cloud_run_job.job_name
}

output "credential_config_json" {
  value = module.cloud_run_job.credential_config_json
}

output "admission_environment" {
  value = module.cloud_run_job.admission_environment
}

output "queue_url" {
  description = "The pool's queue (send {\"executionRequestUrn\": \"urn:li:dataHubExecutionRequest:<id>\"} to run one by hand)."
  value       = local.queue_url
}

output "dead_letter_queue_url" {
  description = "Unreadable messages and requests that waited max_receive_count receives."
  value       = aws_sqs_queue.dlq.url
}

output "admission_function_name" {
  value = aws_lambda_function.admission.function_name
}

output "admission_role_arn" {
  description = "The admission's role: the AWS identity the GCP module trusts (workload identity federation)."
  value       = aws_iam_role.admission.arn
}

output "relay_function_name" {
  value = var.relay_enabled ? aws_lambda_function.relay[0].function_name : null
}

output "cluster_name" {
  value = aws_ecs_cluster.jobs.name
}

output "task_definition_arn" {
  value = aws_ecs_task_definition.job.arn
}

output "job_log_group_name" {
  value = aws_cloudwatch_log_group.job.name
}

output "gms_token_secret_arn" {
  value = local.token_secret_arn
}

output "relay_ledger_table_name" {
  value = aws_dynamodb_table.relay_ledger.name
}

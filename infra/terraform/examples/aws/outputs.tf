output "queue_url" {
  value = module.executor.queue_url
}

output "admission_function_name" {
  value = module.executor.admission_function_name
}

output "relay_function_name" {
  value = module.executor.relay_function_name
}

output "cluster_name" {
  value = module.executor.cluster_name
}

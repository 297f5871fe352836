variable "region" {
  type    = string
  default = "us-east-1"
}

variable "name" {
  type    = string
  default = "datahub-executor"
}

variable "vpc_id" {
  type = string
}

variable "subnet_id" {
  type = list(string)
}

variable "datahub_base_url" {
  type = string
}

variable "executor_pool_id" {
  type    = string
  default = "remote"
}

variable "datahub_access_token" {
  type      = string
  default   = null
  sensitive = true
}

variable "existing_datahub_access_token_secret_arn" {
  type    = string
  default = null
}

variable "datahub_ingestions_max_workers" {
  type    = number
  default = 4
}

variable "optional_secrets" {
  type    = map(string)
  default = {}
}

variable "optional_env_vars" {
  type    = map(string)
  default = {}
}

variable "image_tag" {
  type    = string
  default = "0.1.0"
}

variable "task_cpu" {
  type    = number
  default = 2048
}

variable "task_memory" {
  type    = number
  default = 8192
}

variable "task_ephemeral_storage_size_in_gib" {
  type    = number
  default = 21
}

variable "architectures" {
  type    = string
  default = "arm64"
}

variable "lambda_artifacts_dir" {
  description = "Where cargo lambda put <bin>/bootstrap for var.architectures (scripts/check-infra.sh: $CARGO_TARGET_DIR/lambda-<arch>)."
  type        = string
}

variable "relay_mode" {
  type    = string
  default = "self-hosted"
}

variable "name" {
  type    = string
  default = "datahub-executor"
}

variable "project_id" {
  type = string
}

variable "region" {
  type    = string
  default = "us-central1"
}

variable "datahub_base_url" {
  type = string
}

variable "gms_token_secret_id" {
  type    = string
  default = "datahub-gms-token"
}

variable "image_uri" {
  type = string
}

variable "image_tag" {
  type    = string
  default = "0.1.0"
}

variable "task_cpu" {
  type    = number
  default = 2
}

variable "task_memory" {
  type    = number
  default = 8192
}

variable "secrets_manager_prefix" {
  type    = string
  default = "datahub-"
}

variable "aws_account_id" {
  type = string
}

variable "admission_role_arn" {
  type = string
}

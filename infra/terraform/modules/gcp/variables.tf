# The GCP path: ingest-job as a Cloud Run job, started by the admission Lambda in AWS through
# workload identity federation. Names follow template.yaml in snake_case (infra/README.md).

variable "name" {
  description = "Name prefix of every resource."
  type        = string
  default     = "datahub-executor"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,24}$", var.name))
    error_message = "name must be 1-25 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "project_id" {
  description = "The GCP project of the Cloud Run job and the secrets."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project id."
  }
}

variable "region" {
  description = "The Cloud Run region."
  type        = string
  default     = "us-central1"
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a GCP region such as us-central1."
  }
}

variable "datahub_base_url" {
  description = "DataHubBaseUrl: GMS base URL (DATAHUB_GMS_URL)."
  type        = string
  validation {
    condition     = can(regex("^https?://.+", var.datahub_base_url)) && (!can(regex("\\.acryl\\.io", var.datahub_base_url)) || can(regex("/gms/?$", var.datahub_base_url)))
    error_message = "datahub_base_url must start with http:// or https://, and a DataHub Cloud URL must end with /gms."
  }
}

variable "gms_token_secret_id" {
  description = "The Secret Manager secret (id, in project_id) holding the DataHub access token; injected as DATAHUB_GMS_TOKEN."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.gms_token_secret_id))
    error_message = "gms_token_secret_id must be a Secret Manager secret id."
  }
}

variable "image_uri" {
  description = "ImageUri: the ingest-job image repository without tag (Artifact Registry)."
  type        = string
  validation {
    condition     = can(regex("^[^:@\\s]+/[^:@\\s]+$", var.image_uri))
    error_message = "image_uri must be a repository path without a tag."
  }
}

variable "image_tag" {
  description = "ImageTag: the ingest-job image tag."
  type        = string
  default     = "0.1.0"
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag must be a valid image tag."
  }
}

variable "task_cpu" {
  description = "TaskCpu: CPUs of the job's container (Cloud Run: 1, 2, 4, 8)."
  type        = number
  default     = 2
  validation {
    condition     = contains([1, 2, 4, 8], var.task_cpu)
    error_message = "task_cpu must be 1, 2, 4 or 8."
  }
}

variable "task_memory" {
  description = "TaskMemory: memory of the job's container in MiB."
  type        = number
  default     = 8192
  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 32768
    error_message = "task_memory must be 512..32768 MiB."
  }
}

variable "task_timeout" {
  description = "Seconds one run may take (the Cloud Run task timeout)."
  type        = number
  default     = 86400
  validation {
    condition     = var.task_timeout >= 60 && var.task_timeout <= 604800
    error_message = "task_timeout must be 60..604800 seconds."
  }
}

variable "secrets_manager_prefix" {
  description = "SecretsManagerPrefix: the prefix of the source secrets the job may read (DATAHUB_EXECUTOR_GCP_SM_PREFIX)."
  type        = string
  default     = "datahub-"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]*$", var.secrets_manager_prefix))
    error_message = "secrets_manager_prefix must match ^[A-Za-z0-9_-]*$."
  }
}

variable "optional_env_vars" {
  description = "OptionalEnvVars: plain environment variables for the job."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for k, v in var.optional_env_vars : can(regex("^[A-Za-z0-9_]+$", k))])
    error_message = "optional_env_vars names must be [A-Za-z0-9_]+."
  }
}

variable "optional_secrets" {
  description = "OptionalSecrets: environment variable name => Secret Manager secret id, injected into the job."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for k, v in var.optional_secrets : can(regex("^[A-Za-z0-9_]+$", k)) && can(regex("^[A-Za-z0-9_-]+$", v))])
    error_message = "optional_secrets maps NAME to a secret id."
  }
}

variable "vpc_connector" {
  description = "Optional Serverless VPC Access connector for sources in a VPC (projects/.../connectors/...)."
  type        = string
  default     = null
}

variable "aws_account_id" {
  description = "The AWS account the admission Lambda runs in (workload identity federation trusts it)."
  type        = string
  validation {
    condition     = can(regex("^[0-9]{12}$", var.aws_account_id))
    error_message = "aws_account_id must be 12 digits."
  }
}

variable "admission_role_arn" {
  description = "The admission Lambda's IAM role ARN (output admission_role_arn of the AWS module); only it may act as the launcher."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+", var.admission_role_arn))
    error_message = "admission_role_arn must be an IAM role ARN."
  }
}

variable "labels" {
  description = "Labels for every resource."
  type        = map(string)
  default     = {}
}

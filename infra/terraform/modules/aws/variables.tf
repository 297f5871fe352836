# The variables of template.yaml, in snake_case (infra/README.md has the mapping table).

variable "name" {
  description = "Name prefix of every resource (the SAM stack name)."
  type        = string
  default     = "datahub-executor"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,39}$", var.name))
    error_message = "name must be 1-40 lower-case letters, digits or '-', starting with a letter."
  }
}

variable "vpc_id" {
  description = "VPCID: the VPC the ingestion tasks run in."
  type        = string
  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_id" {
  description = "SubnetID: subnet(s) for the ingestion tasks (DATAHUB_EXECUTOR_ECS_SUBNETS)."
  type        = list(string)
  validation {
    condition     = length(var.subnet_id) > 0 && alltrue([for s in var.subnet_id : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_id must list at least one subnet id (subnet-...)."
  }
}

variable "datahub_base_url" {
  description = "DataHubBaseUrl: GMS base URL, e.g. https://<company>.acryl.io/gms (DATAHUB_GMS_URL)."
  type        = string
  validation {
    condition     = can(regex("^https?://.+", var.datahub_base_url)) && (!can(regex("\\.acryl\\.io", var.datahub_base_url)) || can(regex("/gms/?$", var.datahub_base_url)))
    error_message = "datahub_base_url must start with http:// or https://, and a DataHub Cloud URL must end with /gms."
  }
}

variable "executor_pool_id" {
  description = "ExecutorPoolId: the DataHub executor pool this deployment serves."
  type        = string
  default     = "remote"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.executor_pool_id))
    error_message = "executor_pool_id must be 1-64 letters, digits, '_' or '-'."
  }
}

variable "datahub_access_token" {
  description = "DataHubAccessToken: stored in a new Secrets Manager secret. Leave null when existing_datahub_access_token_secret_arn is set."
  type        = string
  default     = null
  sensitive   = true
}

variable "existing_datahub_access_token_secret_arn" {
  description = "ExistingDataHubAccessTokenSecretArn: an existing secret holding the token as plain text."
  type        = string
  default     = null
  validation {
    condition     = var.existing_datahub_access_token_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:", var.existing_datahub_access_token_secret_arn))
    error_message = "existing_datahub_access_token_secret_arn must be a Secrets Manager ARN."
  }
}

variable "datahub_ingestions_max_workers" {
  description = "DataHubIngestionsMaxWorkers: ingestion jobs at once; default weight 1/N."
  type        = number
  default     = 4
  validation {
    condition     = var.datahub_ingestions_max_workers >= 1 && var.datahub_ingestions_max_workers <= 1000 && floor(var.datahub_ingestions_max_workers) == var.datahub_ingestions_max_workers
    error_message = "datahub_ingestions_max_workers must be a whole number in 1..1000."
  }
}

variable "optional_secrets" {
  description = "OptionalSecrets: environment variable name => Secrets Manager ARN, injected into the job."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for k, v in var.optional_secrets : can(regex("^[A-Za-z0-9_]+$", k)) && can(regex("^arn:", v))])
    error_message = "optional_secrets maps NAME ([A-Za-z0-9_]+) to a secret ARN."
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

variable "image_uri" {
  description = "ImageUri: the ingest-job image repository without tag (default: this account's ECR repository ecr_repository_name)."
  type        = string
  default     = null
}

variable "ecr_repository_name" {
  description = "EcrRepositoryName: the ECR repository the task execution role may pull from."
  type        = string
  default     = "datahub-ingest-job"
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._/-]{1,255}$", var.ecr_repository_name))
    error_message = "ecr_repository_name must be a valid ECR repository name."
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
  description = "TaskCpu: Fargate CPU units."
  type        = number
  default     = 2048
  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu must be one of 256, 512, 1024, 2048, 4096, 8192, 16384."
  }
}

variable "task_memory" {
  description = "TaskMemory: Fargate memory in MiB."
  type        = number
  default     = 8192
  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880
    error_message = "task_memory must be 512..122880 MiB."
  }
}

variable "task_ephemeral_storage_size_in_gib" {
  description = "TaskEphemeralStorageSizeInGiB: Fargate ephemeral storage."
  type        = number
  default     = 21
  validation {
    condition     = var.task_ephemeral_storage_size_in_gib >= 21 && var.task_ephemeral_storage_size_in_gib <= 200
    error_message = "task_ephemeral_storage_size_in_gib must be 21..200."
  }
}

variable "existing_queue_arn" {
  description = "ExistingQueueArn: consume this existing queue (e.g. DataHub Cloud's) instead of creating one."
  type        = string
  default     = null
  validation {
    condition     = var.existing_queue_arn == null || can(regex("^arn:aws[a-z-]*:sqs:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]+$", var.existing_queue_arn))
    error_message = "existing_queue_arn must be an SQS queue ARN."
  }
}

variable "max_receive_count" {
  description = "MaxReceiveCount: receives before the DLQ. Capacity waits are receives (ChangeMessageVisibility with a 30 s..900 s backoff): 100 is over a day of waiting; 3-5 would dead-letter waiting requests."
  type        = number
  default     = 100
  validation {
    condition     = var.max_receive_count >= 10 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be 10..1000 (waiting for capacity counts as receives)."
  }
}

variable "batch_size" {
  description = "BatchSize: SQS records per admission invocation."
  type        = number
  default     = 10
  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 10
    error_message = "batch_size must be 1..10."
  }
}

variable "maximum_concurrency" {
  description = "MaximumConcurrency: most concurrent admissions (SQS minimum 2; the admission re-checks capacity after launching)."
  type        = number
  default     = 2
  validation {
    condition     = var.maximum_concurrency >= 2 && var.maximum_concurrency <= 1000
    error_message = "maximum_concurrency must be 2..1000."
  }
}

variable "capacity_backoff" {
  description = "CapacityBackoff: first wait in seconds of a request that does not fit (doubles per receive)."
  type        = number
  default     = 30
  validation {
    condition     = var.capacity_backoff >= 1 && var.capacity_backoff <= 43200
    error_message = "capacity_backoff must be 1..43200 seconds."
  }
}

variable "capacity_backoff_max" {
  description = "CapacityBackoffMax: longest capacity wait in seconds."
  type        = number
  default     = 900
  validation {
    condition     = var.capacity_backoff_max >= 1 && var.capacity_backoff_max <= 43200
    error_message = "capacity_backoff_max must be 1..43200 seconds."
  }
}

variable "architectures" {
  description = "Architectures: the Lambda functions' architecture (arm64 or x86_64)."
  type        = string
  default     = "arm64"
  validation {
    condition     = contains(["arm64", "x86_64"], var.architectures)
    error_message = "architectures must be arm64 or x86_64."
  }
}

variable "lambda_artifacts_dir" {
  description = "Where `cargo lambda build --release [--arm64] --lambda-dir <dir>` put <bin>/bootstrap (scripts/check-infra.sh: $CARGO_TARGET_DIR/lambda-<architectures>)."
  type        = string
}

variable "secrets_manager_enabled" {
  description = "SecretsManagerEnabled: resolve recipe secrets from Secrets Manager (<prefix><NAME>)."
  type        = bool
  default     = true
}

variable "secrets_manager_prefix" {
  description = "SecretsManagerPrefix: the prefix of the source secrets the job may read."
  type        = string
  default     = "datahub-"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]*$", var.secrets_manager_prefix))
    error_message = "secrets_manager_prefix must match ^[A-Za-z0-9_-]*$."
  }
}

variable "assign_public_ip" {
  description = "AssignPublicIp: give each task a public IP."
  type        = bool
  default     = false
}

variable "capacity_provider" {
  description = "CapacityProvider: FARGATE or FARGATE_SPOT."
  type        = string
  default     = "FARGATE"
  validation {
    condition     = contains(["FARGATE", "FARGATE_SPOT"], var.capacity_provider)
    error_message = "capacity_provider must be FARGATE or FARGATE_SPOT."
  }
}

variable "log_retention_in_days" {
  description = "LogRetentionInDays: retention of every log group."
  type        = number
  default     = 30
  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_in_days)
    error_message = "log_retention_in_days must be a CloudWatch retention value."
  }
}

variable "relay_enabled" {
  description = "Deploy the relay function (functions/relay)."
  type        = bool
  default     = true
}

variable "relay_mode" {
  description = "RelayMode: self-hosted, datahub-cloud or none."
  type        = string
  default     = "self-hosted"
  validation {
    condition     = contains(["self-hosted", "datahub-cloud", "none"], var.relay_mode)
    error_message = "relay_mode must be self-hosted, datahub-cloud or none."
  }
}

variable "relay_schedule" {
  description = "RelaySchedule: how often the relay runs (EventBridge schedule expression)."
  type        = string
  default     = "rate(1 minute)"
  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.relay_schedule))
    error_message = "relay_schedule must be rate(...) or cron(...)."
  }
}

variable "sweeper_enabled" {
  description = "SweeperEnabled: final status for RUNNING requests whose job is gone."
  type        = bool
  default     = true
}

variable "sweeper_lost_grace" {
  description = "SweeperLostGrace: seconds a RUNNING request may have no job."
  type        = number
  default     = 300
  validation {
    condition     = var.sweeper_lost_grace >= 1
    error_message = "sweeper_lost_grace must be positive."
  }
}

variable "sweeper_pending_threshold" {
  description = "SweeperPendingThreshold: seconds after which a never-started request is swept."
  type        = number
  default     = 172800
  validation {
    condition     = var.sweeper_pending_threshold >= 1
    error_message = "sweeper_pending_threshold must be positive."
  }
}

variable "status_enabled" {
  description = "StatusEnabled: report the executor status to GMS."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

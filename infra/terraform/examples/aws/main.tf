# Example root module: the executor on AWS (the same stack as template.yaml).
#   cargo lambda build --release --arm64 --lambda-dir "$CARGO_TARGET_DIR/lambda-arm64"
#   terraform init && terraform apply -var datahub_base_url=... -var vpc_id=... ...

provider "aws" {
  region = var.region
}

module "executor" {
  source = "../../modules/aws"

  name                                     = var.name
  vpc_id                                   = var.vpc_id
  subnet_id                                = var.subnet_id
  datahub_base_url                         = var.datahub_base_url
  executor_pool_id                         = var.executor_pool_id
  datahub_access_token                     = var.datahub_access_token
  existing_datahub_access_token_secret_arn = var.existing_datahub_access_token_secret_arn
  datahub_ingestions_max_workers           = var.datahub_ingestions_max_workers
  optional_secrets                         = var.optional_secrets
  optional_env_vars                        = var.optional_env_vars
  image_tag                                = var.image_tag
  task_cpu                                 = var.task_cpu
  task_memory                              = var.task_memory
  task_ephemeral_storage_size_in_gib       = var.task_ephemeral_storage_size_in_gib
  architectures                            = var.architectures
  lambda_artifacts_dir                     = var.lambda_artifacts_dir
  relay_mode                               = var.relay_mode
}

# `vega-admin maintain` as an ECS service, and `vega-admin doctor` as a one-off task.
#
# maintain is safe as any number of replicas (one leads through the `maintain` lease), so the
# service runs `desired_count` tasks (one by default; two give a warm standby that takes over
# within one lease). A rolling deploy starts the new task before stopping the old one, which
# finishes its job in hand on SIGTERM and hands the lease over at once. Both task definitions
# run the migration image (the repository's Dockerfile), which carries vega-admin.

data "aws_region" "current" {}

locals {
  log_key = var.log_kms_key_arn != null ? var.log_kms_key_arn : var.database.kms_key_arn
  environment = [
    { name = "VEGA_PERSISTENCE_BACKEND", value = "postgres" },
    { name = "VEGA_DATABASE_HOST", value = var.database.writer_endpoint },
    { name = "VEGA_DATABASE_PORT", value = tostring(var.database.port) },
    { name = "VEGA_DATABASE_NAME", value = var.database.database_name },
    { name = "VEGA_DATABASE_SSLMODE", value = "verify-full" },
    { name = "VEGA_DATABASE_SSLROOTCERT", value = "/etc/ssl/certs/rds-global-bundle.pem" },
    { name = "VEGA_BLOB_BACKEND", value = "s3" },
    { name = "VEGA_S3_BUCKET", value = var.blob_bucket.bucket_name },
    { name = "VEGA_S3_PREFIX", value = var.blob_bucket.prefix },
    { name = "VEGA_METRICS_LISTEN", value = "0.0.0.0:${var.metrics_port}" },
  ]
  # <secret ARN>:<JSON key>:: picks one key of the RDS-managed secret's JSON.
  secrets = [
    { name = "VEGA_DATABASE_USER", valueFrom = "${var.database.master_user_secret_arn}:username::" },
    { name = "VEGA_DATABASE_PASSWORD", valueFrom = "${var.database.master_user_secret_arn}:password::" },
  ]
  container = {
    essential              = true
    image                  = var.image
    entryPoint             = ["/usr/local/bin/vega-admin"]
    readonlyRootFilesystem = true
    privileged             = false
    user                   = "65532:65532"
    secrets                = local.secrets
    # Streamed uploads spool to a file before they go to S3; the root filesystem is read-only.
    mountPoints = [{ sourceVolume = "spool", containerPath = "/spool", readOnly = false }]
  }
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/ecs/${var.name}-maintain"
  retention_in_days = var.log_retention_days
  kms_key_id        = local.log_key
  tags              = var.tags
}

data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# The execution role starts the container: pulls the image, writes logs, reads the secret.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-maintain-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "secret" {
  statement {
    sid       = "ReadDatabaseSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.database.master_user_secret_arn]
  }
  statement {
    sid       = "DecryptDatabaseSecret"
    actions   = ["kms:Decrypt"]
    resources = [var.database.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "secret" {
  name   = "read-database-secret"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.secret.json
}

# The task role: purge, gc and retention read, write and delete objects under the prefix,
# exactly what the application may.
resource "aws_iam_role" "task" {
  name               = "${var.name}-maintain-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "blobs" {
  name   = "vega-blob-store"
  role   = aws_iam_role.task.id
  policy = var.blob_bucket.app_policy_json
}

resource "aws_ecs_task_definition" "maintain" {
  family                   = "${var.name}-maintain"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  volume {
    name = "spool"
  }

  container_definitions = jsonencode([merge(local.container, {
    name = "maintain"
    command = concat(["maintain"], var.maintain_args)
    environment = concat(local.environment, [
      { name = "VEGA_SPOOL_DIR", value = "/spool" },
    ])
    portMappings = [{ containerPort = var.metrics_port, protocol = "tcp" }]
    # SIGTERM lets the batch in hand commit; ECS kills after stopTimeout.
    stopTimeout = var.stop_timeout
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "maintain"
      }
    }
  })])

  tags = var.tags
}

# One-off: `aws ecs run-task --task-definition <name>-doctor` (network as the service's).
resource "aws_ecs_task_definition" "doctor" {
  family                   = "${var.name}-doctor"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  volume {
    name = "spool"
  }

  container_definitions = jsonencode([merge(local.container, {
    name    = "doctor"
    command = ["doctor"]
    environment = concat(local.environment, [
      { name = "VEGA_SPOOL_DIR", value = "/spool" },
    ])
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "doctor"
      }
    }
  })])

  tags = var.tags
}

resource "aws_ecs_service" "maintain" {
  name             = "${var.name}-maintain"
  cluster          = var.cluster_arn
  task_definition  = aws_ecs_task_definition.maintain.arn
  desired_count    = var.desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  # Start the new task before stopping the old: the old one hands the lease over on SIGTERM.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = false
  }

  tags = var.tags
}

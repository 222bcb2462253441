# The one-off ECS task that applies migrations (run by scripts/aws/run-migrations.sh).
#
# Credentials come from the RDS-managed master secret at container start, one JSON key each
# (`secrets`/`valueFrom`); vega-migrate builds its URL from them and the endpoint, so a password
# rotated by RDS is picked up by the next run and nothing stores a full URL.

data "aws_region" "current" {}

locals {
  container = "migrate"
  log_key   = var.log_kms_key_arn != null ? var.log_kms_key_arn : var.database.kms_key_arn
  blob_environment = var.blob_bucket == null ? [] : [
    { name = "VEGA_BLOB_BACKEND", value = "s3" },
    { name = "VEGA_S3_BUCKET", value = var.blob_bucket.bucket_name },
    { name = "VEGA_S3_PREFIX", value = var.blob_bucket.prefix },
  ]
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/ecs/${var.name}-migrate"
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
  name               = "${var.name}-migrate-execution"
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

# The task role is what the task's process may do in AWS: vega-migrate talks only to Postgres;
# with a blob bucket, the same settings and policy as the application, for one-off checks.
resource "aws_iam_role" "task" {
  name               = "${var.name}-migrate-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "blobs" {
  count  = var.blob_bucket == null ? 0 : 1
  name   = "vega-blob-store"
  role   = aws_iam_role.task.id
  policy = var.blob_bucket.app_policy_json
}

resource "aws_ecs_task_definition" "this" {
  family                   = "${var.name}-migrate"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  container_definitions = jsonencode([{
    name                   = local.container
    image                  = var.image
    essential              = true
    command                = ["up"]
    readonlyRootFilesystem = true
    privileged             = false
    user                   = "65532:65532"
    environment = concat([
      { name = "VEGA_PERSISTENCE_BACKEND", value = "postgres" },
      { name = "VEGA_DATABASE_HOST", value = var.database.writer_endpoint },
      { name = "VEGA_DATABASE_PORT", value = tostring(var.database.port) },
      { name = "VEGA_DATABASE_NAME", value = var.database.database_name },
      { name = "VEGA_DATABASE_SSLMODE", value = "verify-full" },
      { name = "VEGA_MIGRATE_LOCK_TIMEOUT", value = var.lock_timeout },
    ], local.blob_environment)
    # <secret ARN>:<JSON key>:: picks one key of the RDS-managed secret's JSON.
    secrets = [
      { name = "VEGA_DATABASE_USER", valueFrom = "${var.database.master_user_secret_arn}:username::" },
      { name = "VEGA_DATABASE_PASSWORD", valueFrom = "${var.database.master_user_secret_arn}:password::" },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "migrate"
      }
    }
  }])

  tags = var.tags
}

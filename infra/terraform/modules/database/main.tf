# Vega's metadata database: RDS for PostgreSQL or Aurora PostgreSQL, chosen by var.engine_mode.
#
# Raw resources rather than registry modules, so policy scanners (checkov) see every setting.
# Both variants share the network, encryption, monitoring and parameter settings below; each
# engine-specific resource has count = 0 in the other mode.

locals {
  is_aurora = var.engine_mode == "aurora"
  kms_key   = var.kms_key_arn != null ? var.kms_key_arn : aws_kms_key.this[0].arn
  port      = 5432
  # A fixed name: a second destroy after a restore must not silently overwrite it.
  final_snapshot = "${var.name}-final"
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

# ---------------------------------------------------------------------------------------------
# Encryption key (only when the caller brings none)

resource "aws_kms_key" "this" {
  count                   = var.kms_key_arn == null ? 1 : 0
  description             = "${var.name} database storage, Performance Insights and master secret"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = var.tags
}

# The account administers the key; RDS and Secrets Manager use it through grants made on the
# caller's behalf, which the account-root statement allows.
data "aws_iam_policy_document" "kms" {
  # In a key policy "*" means this key, and kms:* for the account root is AWS's default key
  # policy, which delegates access control to IAM; the generic IAM-policy checks misread it.
  # checkov:skip=CKV_AWS_109:Key policy: resource "*" is this key only (AWS default key policy).
  # checkov:skip=CKV_AWS_111:Key policy: resource "*" is this key only (AWS default key policy).
  # checkov:skip=CKV_AWS_356:Key policy: resource "*" is this key only (AWS default key policy).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  # So the migration task's log group (modules/migration-task) can be encrypted with this key.
  statement {
    sid       = "CloudWatchLogsOfThisAccount"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_alias" "this" {
  count         = var.kms_key_arn == null ? 1 : 0
  name          = "alias/${var.name}-database"
  target_key_id = aws_kms_key.this[0].key_id
}

# ---------------------------------------------------------------------------------------------
# Network: private subnets, and a security group that admits only the given application groups

resource "aws_db_subnet_group" "this" {
  name        = "${var.name}-database"
  description = "Private subnets of the ${var.name} database"
  subnet_ids  = var.subnet_ids
  tags        = var.tags
}

resource "aws_security_group" "this" {
  name        = "${var.name}-database"
  description = "PostgreSQL ${local.port} from the ${var.name} application and migration tasks only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_ingress_rule" "app" {
  for_each                     = toset(var.app_security_group_ids)
  security_group_id            = aws_security_group.this.id
  description                  = "PostgreSQL from ${each.value}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = local.port
  to_port                      = local.port
  tags                         = var.tags
}

# ---------------------------------------------------------------------------------------------
# Enhanced monitoring role

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  name               = "${var.name}-database-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

# ---------------------------------------------------------------------------------------------
# RDS for PostgreSQL

# Family is a literal (not chosen by an expression) so that policy scanners can evaluate the
# parameters; engine_version's validation keeps it in step.
resource "aws_db_parameter_group" "this" {
  count       = local.is_aurora ? 0 : 1
  name        = "${var.name}-postgres16"
  family      = "postgres16"
  description = "${var.name}: TLS only, slow-query logging"

  parameter {
    name         = "rds.force_ssl"
    value        = "1"
    apply_method = "pending-reboot"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = tostring(var.slow_query_ms)
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "this" {
  count                 = local.is_aurora ? 0 : 1
  identifier            = var.name
  engine                = "postgres"
  engine_version        = var.engine_version
  instance_class        = var.instance_class
  allocated_storage     = var.allocated_storage
  max_allocated_storage = var.max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = local.kms_key
  port                  = local.port

  db_name                             = var.database_name
  username                            = var.master_username
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = local.kms_key
  iam_database_authentication_enabled = true

  multi_az               = var.multi_az
  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.this.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.this[0].name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period    = var.backup_retention_days
  backup_window              = var.backup_window
  maintenance_window         = var.maintenance_window
  copy_tags_to_snapshot      = true
  deletion_protection        = var.deletion_protection
  skip_final_snapshot        = false
  final_snapshot_identifier  = local.final_snapshot
  auto_minor_version_upgrade = true

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = local.kms_key
  performance_insights_retention_period = var.performance_insights_retention_days
  monitoring_interval                   = var.monitoring_interval
  monitoring_role_arn                   = aws_iam_role.monitoring.arn
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]

  tags = var.tags
}

# ---------------------------------------------------------------------------------------------
# Aurora PostgreSQL

# For Aurora, rds.force_ssl belongs in the cluster parameter group.
resource "aws_rds_cluster_parameter_group" "this" {
  count       = local.is_aurora ? 1 : 0
  name        = "${var.name}-aurora-postgresql16"
  family      = "aurora-postgresql16"
  description = "${var.name}: TLS only, slow-query logging"

  parameter {
    name         = "rds.force_ssl"
    value        = "1"
    apply_method = "pending-reboot"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = tostring(var.slow_query_ms)
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_rds_cluster" "this" {
  # checkov:skip=CKV2_AWS_8:Recovery is automated backups (backup_retention_period) plus the final snapshot; an AWS Backup plan is an account-level policy attached outside this module.
  count              = local.is_aurora ? 1 : 0
  cluster_identifier = var.name
  engine             = "aurora-postgresql"
  engine_version     = var.engine_version
  storage_encrypted  = true
  kms_key_id         = local.kms_key
  port               = local.port

  database_name                       = var.database_name
  master_username                     = var.master_username
  manage_master_user_password         = true
  master_user_secret_kms_key_id       = local.kms_key
  iam_database_authentication_enabled = true

  db_subnet_group_name            = aws_db_subnet_group.this.name
  vpc_security_group_ids          = [aws_security_group.this.id]
  db_cluster_parameter_group_name = aws_rds_cluster_parameter_group.this[0].name

  backup_retention_period      = var.backup_retention_days
  preferred_backup_window      = var.backup_window
  preferred_maintenance_window = var.maintenance_window
  copy_tags_to_snapshot        = true
  deletion_protection          = var.deletion_protection
  skip_final_snapshot          = false
  final_snapshot_identifier    = local.final_snapshot

  enabled_cloudwatch_logs_exports = ["postgresql"]

  tags = var.tags
}

resource "aws_rds_cluster_instance" "this" {
  count              = local.is_aurora ? var.aurora_instance_count : 0
  identifier         = "${var.name}-${count.index + 1}"
  cluster_identifier = aws_rds_cluster.this[0].id
  engine             = aws_rds_cluster.this[0].engine
  engine_version     = aws_rds_cluster.this[0].engine_version
  instance_class     = var.instance_class
  # Lower tiers are promoted first; the first instance created is the writer.
  promotion_tier      = count.index
  publicly_accessible = false
  ca_cert_identifier  = "rds-ca-rsa2048-g1"

  auto_minor_version_upgrade            = true
  copy_tags_to_snapshot                 = true
  performance_insights_enabled          = true
  performance_insights_kms_key_id       = local.kms_key
  performance_insights_retention_period = var.performance_insights_retention_days
  monitoring_interval                   = var.monitoring_interval
  monitoring_role_arn                   = aws_iam_role.monitoring.arn

  tags = var.tags
}

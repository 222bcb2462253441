output "engine_mode" {
  description = "rds or aurora, as configured."
  value       = var.engine_mode
}

output "writer_endpoint" {
  description = "Host name for writes and for migrations (VEGA_DATABASE_HOST)."
  value       = local.is_aurora ? aws_rds_cluster.this[0].endpoint : aws_db_instance.this[0].address
}

output "reader_endpoint" {
  description = "Host name for read-only queries: Aurora's reader endpoint; for RDS the writer itself (a Multi-AZ standby takes no reads)."
  value       = local.is_aurora ? aws_rds_cluster.this[0].reader_endpoint : aws_db_instance.this[0].address
}

output "port" {
  description = "PostgreSQL port (VEGA_DATABASE_PORT)."
  value       = local.port
}

output "database_name" {
  description = "Database name (VEGA_DATABASE_NAME)."
  value       = var.database_name
}

output "master_user_secret_arn" {
  description = "ARN of the RDS-managed Secrets Manager secret holding the master user's username and password (JSON keys username, password); ECS tasks read them with secrets/valueFrom."
  value       = local.is_aurora ? aws_rds_cluster.this[0].master_user_secret[0].secret_arn : aws_db_instance.this[0].master_user_secret[0].secret_arn
}

output "security_group_id" {
  description = "The database's security group."
  value       = aws_security_group.this.id
}

output "resource_id" {
  description = "Resource id for IAM database authentication policies (rds-db:connect)."
  value       = local.is_aurora ? aws_rds_cluster.this[0].cluster_resource_id : aws_db_instance.this[0].resource_id
}

output "kms_key_arn" {
  description = "The KMS key encrypting storage, Performance Insights and the master secret."
  value       = local.kms_key
}

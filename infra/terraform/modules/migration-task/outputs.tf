output "task_definition_family" {
  description = "MIGRATE_TASK_DEFINITION for infra/environments/<env>.env (the latest active revision runs)."
  value       = aws_ecs_task_definition.this.family
}

output "task_definition_arn" {
  description = "ARN of this revision."
  value       = aws_ecs_task_definition.this.arn
}

output "container_name" {
  description = "MIGRATE_CONTAINER: the container whose command run-migrations.sh overrides."
  value       = local.container
}

output "log_group_name" {
  description = "CloudWatch Logs group of the migration runs."
  value       = aws_cloudwatch_log_group.this.name
}

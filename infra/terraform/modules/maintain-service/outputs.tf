output "service_name" {
  description = "The maintain ECS service."
  value       = aws_ecs_service.maintain.name
}

output "maintain_task_definition_arn" {
  description = "ARN of the maintain task definition's revision."
  value       = aws_ecs_task_definition.maintain.arn
}

output "doctor_task_definition_family" {
  description = "Run `aws ecs run-task --task-definition <this>` (with the service's network configuration) for a doctor report in the logs."
  value       = aws_ecs_task_definition.doctor.family
}

output "log_group_name" {
  description = "CloudWatch Logs group of maintain and doctor (stream prefixes maintain/ and doctor/)."
  value       = aws_cloudwatch_log_group.this.name
}

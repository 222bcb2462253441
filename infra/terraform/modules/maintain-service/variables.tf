variable "name" {
  description = "Environment name, e.g. vega-prod; the families are <name>-maintain and <name>-doctor."
  type        = string
}

variable "image" {
  description = "The image the repository's Dockerfile builds (vega-migrate with vega-admin beside it), by digest or immutable tag."
  type        = string
}

variable "cluster_arn" {
  description = "The ECS cluster the maintain service runs in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the tasks (they need the database and S3, through NAT or VPC endpoints)."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups for the tasks: one the database module admits on 5432, and whatever lets Prometheus reach metrics_port."
  type        = list(string)
}

variable "database" {
  description = "Outputs of the database module: writer_endpoint, port, database_name, master_user_secret_arn, kms_key_arn."
  type = object({
    writer_endpoint        = string
    port                   = number
    database_name          = string
    master_user_secret_arn = string
    kms_key_arn            = string
  })
}

variable "blob_bucket" {
  description = "Outputs of the blob-bucket module (bucket_name, prefix, app_policy_json): purge, gc and event retention work on the bucket."
  type = object({
    bucket_name     = string
    prefix          = string
    app_policy_json = string
  })
}

variable "desired_count" {
  description = "maintain replicas: one leads, the others stand by and take over within one lease."
  type        = number
  default     = 1
}

variable "maintain_args" {
  description = "Flags after `vega-admin maintain` (schedules, --retain-events, --lease; see the README)."
  type        = list(string)
  default     = []
}

variable "metrics_port" {
  description = "Port of the Prometheus endpoint (/metrics), set as VEGA_METRICS_LISTEN."
  type        = number
  default     = 9464
}

variable "stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before it kills the container: long enough for one retention batch to commit."
  type        = number
  default     = 60
}

variable "log_retention_days" {
  description = "Days to keep the tasks' logs."
  type        = number
  default     = 365
}

variable "log_kms_key_arn" {
  description = "KMS key for the log group; null uses the database's key (its policy must allow CloudWatch Logs)."
  type        = string
  default     = null
}

variable "cpu" {
  description = "Fargate CPU units of the maintain task."
  type        = number
  default     = 256
}

variable "memory" {
  description = "Fargate memory of the maintain task, in MiB."
  type        = number
  default     = 512
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

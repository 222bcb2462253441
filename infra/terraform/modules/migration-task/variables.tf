variable "name" {
  description = "Environment name, e.g. vega-prod; the task definition family is <name>-migrate."
  type        = string
}

variable "image" {
  description = "The vega-migrate image (the repository's Dockerfile), by digest or immutable tag."
  type        = string
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
  description = "Outputs of the blob-bucket module (bucket_name, prefix, app_policy_json): the task gets the VEGA_S3_* settings and the bucket policy, so every Vega setting is the same in every task; null leaves blobs unconfigured (vega-migrate itself never touches them)."
  type = object({
    bucket_name     = string
    prefix          = string
    app_policy_json = string
  })
  default = null
}

variable "log_retention_days" {
  description = "Days to keep the migration task's logs."
  type        = number
  default     = 365
}

variable "log_kms_key_arn" {
  description = "KMS key for the log group; null uses the database's key (its policy must allow CloudWatch Logs)."
  type        = string
  default     = null
}

variable "cpu" {
  description = "Fargate CPU units."
  type        = number
  default     = 256
}

variable "memory" {
  description = "Fargate memory in MiB."
  type        = number
  default     = 512
}

variable "lock_timeout" {
  description = "VEGA_MIGRATE_LOCK_TIMEOUT: how long one DDL statement may wait for a table lock."
  type        = string
  default     = "5s"
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "name" {
  description = "Name of the environment's database, e.g. vega-prod; prefixes every resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,40}$", var.name))
    error_message = "name must be 2-41 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "engine_mode" {
  description = "rds: one RDS for PostgreSQL instance (Multi-AZ standby). aurora: an Aurora PostgreSQL cluster with a writer and readers. Changing it on a live environment replaces the database; see the README."
  type        = string
  default     = "rds"

  validation {
    condition     = contains(["rds", "aurora"], var.engine_mode)
    error_message = "engine_mode must be \"rds\" or \"aurora\"."
  }
}

variable "engine_version" {
  description = "PostgreSQL version. The parameter groups are for major version 16; changing the major version means changing their families too."
  type        = string
  default     = "16.4"

  validation {
    condition     = can(regex("^16(\\.[0-9]+)?$", var.engine_version))
    error_message = "engine_version must be a PostgreSQL 16 version (the parameter group families are postgres16 and aurora-postgresql16)."
  }
}

variable "instance_class" {
  description = "Instance class of the RDS instance or of each Aurora instance."
  type        = string
  default     = "db.r6g.large"
}

variable "allocated_storage" {
  description = "RDS only: initial storage in GiB."
  type        = number
  default     = 50
}

variable "max_allocated_storage" {
  description = "RDS only: storage autoscaling ceiling in GiB (0 disables autoscaling)."
  type        = number
  default     = 500
}

variable "aurora_instance_count" {
  description = "Aurora only: instances in the cluster; the first is the writer, the rest are readers and failover targets. At least 2 for high availability."
  type        = number
  default     = 2

  validation {
    condition     = var.aurora_instance_count >= 1 && var.aurora_instance_count <= 15
    error_message = "aurora_instance_count must be between 1 and 15."
  }
}

variable "multi_az" {
  description = "RDS only: keep a synchronous standby in a second availability zone."
  type        = bool
  default     = true
}

variable "database_name" {
  description = "Name of the database Vega connects to (VEGA_DATABASE_NAME)."
  type        = string
  default     = "vega"
}

variable "master_username" {
  description = "Master user name. Its password is generated and rotated by RDS in Secrets Manager; nothing here or in the Terraform state holds it."
  type        = string
  default     = "vega_admin"
}

variable "vpc_id" {
  description = "VPC of the database and its security group."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets, in at least two availability zones, for the subnet group."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids needs subnets in at least two availability zones."
  }
}

variable "app_security_group_ids" {
  description = "Security groups allowed to connect on 5432: the application's services and the migration task. Nothing else is admitted."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for storage, Performance Insights and the master secret. When null the module creates one, with rotation on, that CloudWatch Logs of this account may also use (for the migration task's logs)."
  type        = string
  default     = null
}

variable "backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery window)."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 7 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 7 and 35."
  }
}

variable "backup_window" {
  description = "Daily backup window (UTC), e.g. 03:00-04:00."
  type        = string
  default     = "03:00-04:00"
}

variable "maintenance_window" {
  description = "Weekly maintenance window (UTC), e.g. sun:04:30-sun:05:30; must not overlap the backup window."
  type        = string
  default     = "sun:04:30-sun:05:30"
}

variable "deletion_protection" {
  description = "Refuse deletes of the database. Turn off only in the change that deliberately destroys it."
  type        = bool
  default     = true
}

variable "monitoring_interval" {
  description = "Enhanced monitoring interval in seconds (1, 5, 10, 15, 30 or 60)."
  type        = number
  default     = 60

  validation {
    condition     = contains([1, 5, 10, 15, 30, 60], var.monitoring_interval)
    error_message = "monitoring_interval must be one of 1, 5, 10, 15, 30, 60."
  }
}

variable "performance_insights_retention_days" {
  description = "Days of Performance Insights history (7 is free; otherwise a multiple of 31, up to 731)."
  type        = number
  default     = 7
}

variable "slow_query_ms" {
  description = "Statements slower than this are logged (log_min_duration_statement) and exported to CloudWatch."
  type        = number
  default     = 500
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
